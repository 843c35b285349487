//! Arbitrary bytes on the control socket, as either side reads them: the
//! framing (u32 length, limit) and then bincode into a message. Whatever the
//! bytes, decoding must return a message, "need more bytes" or an error:
//! never panic, never allocate past the frame limit, never loop.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{GatewayCodec, GatewayMessage, HostCodec, HostMessage, MAX_FRAME_LEN};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The host reads gateway messages: this is the direction an attacker
    // who can reach the socket controls.
    drain(&mut HostCodec::default(), data, |m: GatewayMessage| {
        // Whatever decodes must encode back to the same message.
        let body = protocol::codec::encode_body(&m).expect("a decoded message encodes");
        assert!(body.len() <= MAX_FRAME_LEN);
        assert_eq!(protocol::codec::decode_body::<GatewayMessage>(&body).expect("round trip"), m);
    });
    // The gateway reads host messages (a host is trusted, but a bug there
    // must not take gateways down with it).
    drain(&mut GatewayCodec::default(), data, |_: HostMessage| {});
    // The body decoder alone, without a length prefix.
    let _ = protocol::codec::decode_body::<GatewayMessage>(data);
});

/// Decodes frames until the buffer runs dry or an error ends the stream, as
/// the connection loops do.
fn drain<D: Decoder>(codec: &mut D, data: &[u8], mut check: impl FnMut(D::Item)) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(message)) => {
                check(message);
                assert!(buf.len() < before, "a decoded frame consumed no bytes");
            }
            Ok(None) | Err(_) => return,
        }
    }
}
