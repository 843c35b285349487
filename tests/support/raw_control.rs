//! A raw client of the host's control socket, for tests that play a broken
//! or hostile gateway: valid frames are built with the protocol crate's own
//! encoder, broken ones are written byte by byte.

use std::path::Path;
use std::time::Duration;

use protocol::codec::{decode_body, encode_body};
use protocol::{GatewayMessage, HostMessage, PROTOCOL_VERSION, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What the host did next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one at a time, in tests")]
pub enum Heard {
    Message(HostMessage),
    /// The host closed the connection (EOF or reset).
    Closed,
    /// Nothing within the wait.
    Silence,
}

pub struct RawControl {
    stream: UnixStream,
}

impl RawControl {
    pub async fn connect(socket: &Path) -> RawControl {
        let stream = UnixStream::connect(socket).await.unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        RawControl { stream }
    }

    /// Writes bytes as they are; a host that already closed is not an error
    /// here (what it said before closing is read with [`Self::next`]).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// One well-formed frame: big-endian u32 length, then the bincode body.
    pub fn frame(message: &GatewayMessage) -> Vec<u8> {
        Self::frame_of(&encode_body(message).expect("encoding a message"))
    }

    /// A frame around any body.
    pub fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    pub async fn send(&mut self, message: &GatewayMessage) {
        self.send_raw(&Self::frame(message)).await;
    }

    /// The next message, skipping phase broadcasts.
    pub async fn next(&mut self, wait: Duration) -> Heard {
        loop {
            match self.next_any(wait).await {
                Heard::Message(HostMessage::PhaseChanged(_)) => continue,
                other => return other,
            }
        }
    }

    async fn next_any(&mut self, wait: Duration) -> Heard {
        let read = async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(decode_body::<HostMessage>(&body).expect("the host sent a frame we cannot decode"))
        };
        match tokio::time::timeout(wait, read).await {
            Err(_) => Heard::Silence,
            Ok(None) => Heard::Closed,
            Ok(Some(m)) => Heard::Message(m),
        }
    }

    /// After the host said its last word: the connection must be closed.
    pub async fn expect_closed(&mut self, wait: Duration) {
        match self.next(wait).await {
            Heard::Closed => {}
            other => panic!("expected the host to close the connection, got {other:?}"),
        }
    }

    /// Hello with our protocol version; the host's welcome. The segment it
    /// names stays in /dev/shm until [`Self::segment_mapped`] (or until this
    /// connection ends).
    pub async fn hello(&mut self) -> Welcome {
        self.send(&GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION, gateway: "raw-test-client".into() }).await;
        match self.next(Duration::from_secs(5)).await {
            Heard::Message(HostMessage::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Says the segment is mapped (without mapping it: the host cannot tell).
    pub async fn segment_mapped(&mut self) {
        self.send(&GatewayMessage::SegmentMapped).await;
    }

    /// The whole handshake.
    pub async fn handshake(socket: &Path) -> (RawControl, Welcome) {
        let mut c = RawControl::connect(socket).await;
        let welcome = c.hello().await;
        c.segment_mapped().await;
        (c, welcome)
    }
}
