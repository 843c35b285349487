//! Removes segments that a killed host left in /dev/shm.
//!
//! A segment's name is unlinked as soon as its gateway has mapped it, so
//! only a host killed during a handshake can leave one behind. Its name
//! carries the creator's pid; a name whose creator is gone is removed.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use protocol::shm::naming::owner_pid;

pub fn sweep_stale_segments() -> usize {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else { continue };
        if process_alive(pid) {
            continue;
        }
        match nix::sys::mman::shm_unlink(format!("/{name}").as_str()) {
            Ok(()) => {
                tracing::info!(segment = %name, dead_pid = pid, "removed stale shared-memory segment");
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

    #[test]
    fn removes_a_dead_pids_segment_and_keeps_a_live_ones() {
        // Pid 2^22 + 1 is above Linux's pid_max limit, so never alive.
        let dead = segment_name((1 << 22) + 1, 1);
        let live = segment_name(std::process::id(), 999_999);
        let layout = SlotLayout::new(1, 16).unwrap();
        let mut dead_seg = Segment::create(&dead, layout, 0o600).unwrap();
        let _live_seg = Segment::create(&live, layout, 0o600).unwrap();
        assert!(sweep_stale_segments() >= 1);
        assert!(!std::path::Path::new(&format!("/dev/shm{dead}")).exists());
        assert!(std::path::Path::new(&format!("/dev/shm{live}")).exists());
        let _ = dead_seg.unlink();
    }
}
