//! Names of the host's segments: `/model-host.<host pid>.<connection id>`.
//!
//! The pid in the name lets a starting host find segments whose creator is
//! gone (killed between creating a segment and unlinking it) and remove
//! them, without touching a live host's.

/// Every segment the host creates starts with this (after the '/').
pub const SEGMENT_PREFIX: &str = "model-host.";

/// The POSIX name (with its leading '/') of a connection's segment.
pub fn segment_name(host_pid: u32, connection_id: u64) -> String {
    format!("/{SEGMENT_PREFIX}{host_pid}.{connection_id}")
}

/// The creator's pid, for a file name under /dev/shm that is one of ours.
pub fn owner_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(SEGMENT_PREFIX)?;
    let (pid, connection) = rest.split_once('.')?;
    connection.parse::<u64>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = segment_name(4242, 17);
        assert_eq!(name, "/model-host.4242.17");
        assert_eq!(owner_pid(&name[1..]), Some(4242));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in ["model-host.12", "model-host.x.1", "other.1.2", "model-host.1.2.3", "sem.model-host.1.2"] {
            assert_eq!(owner_pid(name), None, "{name}");
        }
    }
}
