//! Removes segments that a killed host left in /dev/shm.
//!
//! A segment's name is unlinked as soon as its gateway has mapped it, so
//! only a host killed during a handshake can leave one behind. Its name
//! carries the creator's pid; a name whose creator is gone is removed.
//!
//! So is a name that carries this process's own pid, at its first sweep:
//! a host has made no segment before it starts, and in a container the
//! host is pid 1 after every restart, while /dev/shm (a pod's `emptyDir`)
//! outlives the container, so the run before this one left names with
//! "our" pid.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use protocol::shm::naming::owner_pid;

/// Set by the first sweep: later ones (none in the daemon) keep our own names.
static SWEPT_BEFORE: AtomicBool = AtomicBool::new(false);

pub fn sweep_stale_segments() -> usize {
    let first = !SWEPT_BEFORE.swap(true, Ordering::Relaxed);
    sweep(first.then(std::process::id))
}

/// Removes the segments of dead pids, and those of `stale_pid` (ours at
/// start, when none of ours can exist yet).
fn sweep(stale_pid: Option<u32>) -> usize {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else { continue };
        if Some(pid) != stale_pid && process_alive(pid) {
            continue;
        }
        match nix::sys::mman::shm_unlink(format!("/{name}").as_str()) {
            Ok(()) => {
                tracing::info!(segment = %name, owner_pid = pid, "removed stale shared-memory segment");
                removed += 1;
            }
            Err(e) => tracing::warn!(segment = %name, error = %e, "could not remove stale segment"),
        }
    }
    removed
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // EPERM: it exists but belongs to someone else; leave it alone.
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::shm::naming::segment_name;
    use protocol::shm::{Segment, SlotLayout};

    /// A sweep removes every dead pid's segment in /dev/shm, not only its
    /// own test's: run side by side, the second test's sweep could take the
    /// first one's dead segment between its creation and the first test's
    /// own sweep, which then found none to remove (seen once in a full run).
    /// The two tests take turns.
    static ONE_SWEEP_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        ONE_SWEEP_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn removes_a_dead_pids_segment_and_keeps_a_live_ones() {
        let _turn = one_at_a_time();
        // Pid 2^22 + 1 is above Linux's pid_max limit, so never alive.
        let dead = segment_name((1 << 22) + 1, 1);
        let live = segment_name(std::process::id(), 999_999);
        let layout = SlotLayout::new(1, 16).unwrap();
        let mut dead_seg = Segment::create(&dead, layout, 0o600).unwrap();
        let _live_seg = Segment::create(&live, layout, 0o600).unwrap();
        // Not the public entry point: its first call would treat this test
        // process's pid, which other tests' segments carry, as stale.
        assert!(sweep(None) >= 1);
        assert!(!std::path::Path::new(&format!("/dev/shm{dead}")).exists());
        assert!(std::path::Path::new(&format!("/dev/shm{live}")).exists());
        let _ = dead_seg.unlink();
    }

    #[test]
    fn removes_the_segments_of_its_own_pid_at_start() {
        let _turn = one_at_a_time();
        // The parent (cargo test's runner) plays a restarted host in a
        // container, alive and with the pid the stale names carry.
        let restarted = std::os::unix::process::parent_id();
        let stale = segment_name(restarted, 999_998);
        let other = segment_name(std::process::id(), 999_997);
        let layout = SlotLayout::new(1, 16).unwrap();
        let mut stale_seg = Segment::create(&stale, layout, 0o600).unwrap();
        let _other_seg = Segment::create(&other, layout, 0o600).unwrap();
        assert!(sweep(Some(restarted)) >= 1);
        assert!(!std::path::Path::new(&format!("/dev/shm{stale}")).exists());
        assert!(std::path::Path::new(&format!("/dev/shm{other}")).exists(), "a live pid's segment must stay");
        let _ = stale_seg.unlink();
    }
}
