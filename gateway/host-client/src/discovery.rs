//! Where the fleet's members come from: the sockets named with
//! `--host-socket` (kept for the gateway's lifetime), and the sockets in
//! `--host-dir`, watched with inotify (the `notify` crate) so that a host
//! that starts, stops or is replaced is picked up with no gateway restart.
//!
//! A directory entry is keyed by its path *and* inode: a host restarted on
//! the same path makes a new socket file, so the old member (whose host may
//! still be draining its in-flight requests) is retired and a new one
//! started. Anything that is not a socket is skipped with one log line per
//! file. Events only trigger a full rescan, which also runs every
//! [`RESCAN_EVERY`] in case an event was lost (inotify queue overflow).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

use super::Fleet;
use super::member::{self, LinkOptions, MemberHandle};

const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// Starts a member per socket in `sockets`, and the directory watch.
pub fn start(fleet: &Fleet, sockets: &[PathBuf], dir: Option<&Path>, options: LinkOptions) -> Result<(), String> {
    let options = Arc::new(options);
    if let Some(dir) = dir {
        options.trust.check_dir(dir)?;
    }
    // Their handles are dropped: such a member is never retired.
    for socket in sockets {
        member::spawn(fleet, socket.clone(), options.clone(), false);
    }
    let Some(dir) = dir else { return Ok(()) };
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |_event| {
        let _ = events_tx.send(());
    })
    .map_err(|e| format!("watching --host-dir {}: {e}", dir.display()))?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("watching --host-dir {}: {e}", dir.display()))?;
    let mut directory = Directory { fleet: fleet.clone(), dir: dir.to_path_buf(), options, members: HashMap::new(), skipped: HashSet::new() };
    directory.rescan();
    tokio::spawn(async move {
        let _watcher = watcher;
        directory.watch(events).await;
    });
    Ok(())
}

/// Identity of a directory entry: a replaced socket is a new entry.
type EntryKey = (PathBuf, u64);

struct Directory {
    fleet: Fleet,
    dir: PathBuf,
    options: Arc<LinkOptions>,
    members: HashMap<EntryKey, MemberHandle>,
    /// Entries already logged as skipped (not sockets), so each is logged once.
    skipped: HashSet<EntryKey>,
}

impl Directory {
    async fn watch(&mut self, mut events: mpsc::UnboundedReceiver<()>) {
        loop {
            tokio::select! {
                event = events.recv() => {
                    if event.is_none() {
                        return;
                    }
                    while events.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(RESCAN_EVERY) => {}
            }
            self.rescan();
        }
    }

    /// Starts members for new sockets, retires those whose socket is gone
    /// or replaced, and wakes the others (their socket may have changed).
    fn rescan(&mut self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read --host-dir; keeping the hosts already known");
                return;
            }
        };
        let mut present = HashSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            // Followed: a link placed in the trusted directory is trusted.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let key = (path, meta.ino());
            if !meta.file_type().is_socket() {
                if self.skipped.insert(key.clone()) {
                    tracing::warn!(path = %key.0.display(), "skipping a --host-dir entry that is not a socket");
                }
                continue;
            }
            present.insert(key);
        }
        self.skipped.retain(|key| key.0.exists());
        self.members.retain(|key, handle| {
            let keep = present.contains(key);
            if keep {
                handle.kick.notify_one();
            } else {
                let _ = handle.retire.send(true);
            }
            keep
        });
        for key in present {
            if !self.members.contains_key(&key) {
                tracing::info!(socket = %key.0.display(), "found a host socket");
                let handle = member::spawn(&self.fleet, key.0.clone(), self.options.clone(), true);
                self.members.insert(key, handle);
            }
        }
    }
}
