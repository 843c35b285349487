//! The first exchange on a control connection.
//!
//! 1. gateway -> host: [`GatewayMessage::Hello`] with [`PROTOCOL_VERSION`].
//! 2. host -> gateway: [`HostMessage::Welcome`] (model, segment, phase), or
//!    [`HostMessage::Refused`] and a closed connection.
//! 3. gateway maps the segment named in the welcome and answers
//!    [`GatewayMessage::SegmentMapped`]; the host then unlinks the segment's
//!    name, so that nothing is left in /dev/shm if either side is killed.
//!
//! Until step 3 the host accepts nothing else from that gateway.

use thiserror::Error;

use crate::message::GatewayMessage;

/// Bumped on any change to a message, the framing or the segment layout.
pub const PROTOCOL_VERSION: u32 = 10;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("protocol version mismatch: peer speaks {peer}, this build speaks {ours}")]
    VersionMismatch { peer: u32, ours: u32 },
    #[error("expected Hello as the first message, got {0}")]
    NotHello(&'static str),
}

/// Checks a gateway's first message; returns its self-description.
pub fn check_hello(message: &GatewayMessage) -> Result<&str, HandshakeError> {
    match message {
        GatewayMessage::Hello { protocol_version, gateway } => {
            if *protocol_version != PROTOCOL_VERSION {
                return Err(HandshakeError::VersionMismatch { peer: *protocol_version, ours: PROTOCOL_VERSION });
            }
            Ok(gateway)
        }
        other => Err(HandshakeError::NotHello(other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_our_version() {
        let hello = GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION, gateway: "gw-1".into() };
        assert_eq!(check_hello(&hello), Ok("gw-1"));
    }

    #[test]
    fn refuses_other_versions_and_other_messages() {
        let hello = GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION + 1, gateway: String::new() };
        assert_eq!(
            check_hello(&hello),
            Err(HandshakeError::VersionMismatch { peer: PROTOCOL_VERSION + 1, ours: PROTOCOL_VERSION })
        );
        assert_eq!(check_hello(&GatewayMessage::SegmentMapped), Err(HandshakeError::NotHello("SegmentMapped")));
    }
}
