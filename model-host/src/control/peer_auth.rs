//! Who may talk to the host: the peer's credentials (SO_PEERCRED, taken by
//! the kernel at connect time) are checked against allowed users and
//! groups before a single frame is read.
//!
//! The socket's file mode (0660) is the first fence; this is the second,
//! so that a process that got into the socket's group by accident, or a
//! socket made with a looser mode, still cannot drive the model.

use nix::unistd::{Gid, Uid};
pub use service::IdSpec;

/// Allowed users and groups; a peer passes if either matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl PeerPolicy {
    /// From `--allowed-uids` / `--allowed-gids`; empty lists mean "the
    /// host's own user", which is what a single-user setup wants.
    pub fn new(uids: &[IdSpec], gids: &[IdSpec]) -> Result<Self, String> {
        let mut policy = PeerPolicy {
            uids: uids.iter().map(|s| s.resolve_user()).collect::<Result<_, _>>()?,
            gids: gids.iter().map(|s| s.resolve_group()).collect::<Result<_, _>>()?,
        };
        if policy.uids.is_empty() && policy.gids.is_empty() {
            policy.uids.push(Uid::effective().as_raw());
        }
        Ok(policy)
    }

    pub fn allows(&self, uid: Option<u32>, gid: Option<u32>) -> bool {
        uid.is_some_and(|u| self.uids.contains(&u)) || gid.is_some_and(|g| self.gids.contains(&g))
    }
}

/// The host's own group, for logs.
pub fn own_gid() -> u32 {
    Gid::effective().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_hosts_own_user() {
        let p = PeerPolicy::new(&[], &[]).unwrap();
        assert_eq!(p.uids, vec![Uid::effective().as_raw()]);
        assert!(p.allows(Some(Uid::effective().as_raw()), None));
        assert!(!p.allows(Some(Uid::effective().as_raw() + 4242), Some(4242)));
        assert!(!p.allows(None, None));
    }

    #[test]
    fn users_and_groups_by_number_or_name() {
        let p = PeerPolicy::new(&["1001".parse().unwrap(), "root".parse().unwrap()], &["2002".parse().unwrap()]).unwrap();
        assert_eq!(p.uids, vec![1001, 0]);
        assert!(p.allows(Some(5), Some(2002)), "group match is enough");
        assert!(p.allows(Some(1001), Some(5)));
        assert!(!p.allows(Some(5), Some(5)));
        assert!(PeerPolicy::new(&["no-such-user-xyz".parse().unwrap()], &[]).is_err());
    }
}
