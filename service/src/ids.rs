//! Users and groups named on the command line, by number or by name: the
//! host's `--allowed-uids` (who may connect to it) and the gateway's
//! `--allowed-host-uids` (whom it trusts to be a host).

use std::str::FromStr;

use nix::unistd::{Group, User};

/// A user or group given by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSpec {
    Id(u32),
    Name(String),
}

impl FromStr for IdSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty user or group".into());
        }
        Ok(s.parse().map(IdSpec::Id).unwrap_or_else(|_| IdSpec::Name(s.to_string())))
    }
}

impl IdSpec {
    /// The uid, looking a name up in the user database.
    pub fn resolve_user(&self) -> Result<u32, String> {
        match self {
            IdSpec::Id(id) => Ok(*id),
            IdSpec::Name(name) => match User::from_name(name) {
                Ok(Some(user)) => Ok(user.uid.as_raw()),
                _ => Err(format!("no user named {name:?}")),
            },
        }
    }

    /// The gid, looking a name up in the group database.
    pub fn resolve_group(&self) -> Result<u32, String> {
        match self {
            IdSpec::Id(id) => Ok(*id),
            IdSpec::Name(name) => match Group::from_name(name) {
                Ok(Some(group)) => Ok(group.gid.as_raw()),
                _ => Err(format!("no group named {name:?}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        assert_eq!("1001".parse::<IdSpec>().unwrap(), IdSpec::Id(1001));
        assert_eq!(" root ".parse::<IdSpec>().unwrap().resolve_user(), Ok(0));
        assert!("".parse::<IdSpec>().is_err());
        assert!("no-such-user-xyz".parse::<IdSpec>().unwrap().resolve_user().is_err());
    }
}
