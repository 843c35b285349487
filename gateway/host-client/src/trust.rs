//! Whom the gateway trusts to be a model host: a host receives users'
//! images, so a socket is only used if the process listening on it runs
//! as an allowed user (SO_PEERCRED, taken by the kernel at the host's
//! `listen`), and a directory of sockets is only watched if nobody else
//! can put a socket in it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Uid, User};
use service::IdSpec;

/// The user a packaged host runs as (systemd/model-host.service).
const HOST_USER: &str = "model-host";

/// The uids a host may run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTrust {
    uids: Vec<u32>,
}

impl HostTrust {
    /// From `--allowed-host-uids`; empty means the gateway's own user and
    /// the `model-host` user (when this machine has one).
    pub fn new(specs: &[IdSpec]) -> Result<Self, String> {
        let mut uids: Vec<u32> = specs.iter().map(IdSpec::resolve_user).collect::<Result<_, _>>()?;
        if uids.is_empty() {
            uids.push(Uid::effective().as_raw());
            if let Ok(Some(user)) = User::from_name(HOST_USER) {
                uids.push(user.uid.as_raw());
            }
        }
        uids.dedup();
        Ok(Self { uids })
    }

    pub fn uids(&self) -> &[u32] {
        &self.uids
    }

    /// Whether a peer running as `uid` may serve this gateway.
    pub fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// Refuses a host directory that anyone but a trusted user (or root)
    /// could add a socket to: it must be a directory owned by one of them,
    /// writable by its owner only.
    pub fn check_dir(&self, dir: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(dir).map_err(|e| format!("--host-dir {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("--host-dir {} is not a directory", dir.display()));
        }
        let owner = meta.uid();
        if owner != 0 && !self.allows(owner) {
            return Err(format!(
                "--host-dir {} is owned by uid {owner}, which is not a trusted host user (--allowed-host-uids: {:?}) or root",
                dir.display(),
                self.uids
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "--host-dir {} has mode {mode:o}: others than its owner can put a socket there; make it writable by its owner only (chmod go-w)",
                dir.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn default_trusts_the_gateways_own_user_only_plus_model_host() {
        let trust = HostTrust::new(&[]).unwrap();
        assert!(trust.allows(Uid::effective().as_raw()));
        assert!(!trust.allows(4_242_424));
        let named = HostTrust::new(&["4242424".parse().unwrap()]).unwrap();
        assert_eq!(named.uids(), &[4_242_424]);
        assert!(HostTrust::new(&["no-such-user-xyz".parse().unwrap()]).is_err());
    }

    #[test]
    fn a_directory_others_can_write_is_refused_naming_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let trust = HostTrust::new(&[]).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(trust.check_dir(dir.path()), Ok(()));
        for mode in [0o770, 0o777, 0o1777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = trust.check_dir(dir.path()).unwrap_err();
            assert!(e.contains(&format!("{mode:o}")) && e.contains("chmod go-w"), "{e}");
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(trust.check_dir(&file).unwrap_err().contains("not a directory"));
        assert!(trust.check_dir(&dir.path().join("missing")).is_err());
    }
}
