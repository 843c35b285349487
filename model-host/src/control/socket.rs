//! Binding the control socket without stealing a live host's.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;

use crate::error::HostError;

/// Binds `path` with `mode`. A socket file left by a dead host (nothing
/// accepts on it) is replaced; one a live host still serves is refused.
pub fn bind(path: &Path, mode: u32) -> Result<Listener, HostError> {
    let shown = path.display().to_string();
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(HostError::SocketInUse { path: shown });
        }
        tracing::info!(path = %shown, "replacing stale control socket");
        std::fs::remove_file(path).map_err(|source| HostError::Socket { path: shown.clone(), source })?;
    }
    let name = path.to_fs_name::<GenericFilePath>().map_err(|source| HostError::Socket { path: shown.clone(), source })?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(mode)
        .reclaim_name(true)
        .create_tokio()
        .map_err(|source| HostError::Socket { path: shown.clone(), source })?;
    // bind() applies the umask to the mode set before it, so the file may be
    // stricter than asked (never looser); set the exact mode now.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| HostError::Socket { path: shown, source })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // A stale file: bound once, listener gone without removing it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&path, 0o660), Err(HostError::SocketInUse { .. })));
        drop(live);
    }
}
