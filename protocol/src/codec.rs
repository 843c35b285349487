//! Framing for the control channel: a big-endian u32 length, then one
//! bincode-encoded message.
//!
//! Decoding is strict: a frame over [`MAX_FRAME_LEN`] is refused before its
//! body is buffered; bincode decodes with the same byte limit, so a length
//! prefix inside the frame that claims more than the frame holds fails
//! instead of allocating; bytes left over after the message are an error.

use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::message::{GatewayMessage, HostMessage};

/// Largest frame either side accepts. Control messages are far smaller
/// (a full status or a 1000-class top-k is a few KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("control channel i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLong { len: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes { extra: usize },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `Out` and decodes `In`; each side uses the pair that fits it.
pub struct ControlCodec<Out, In> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

/// The host's codec: it reads gateway messages and writes host messages.
pub type HostCodec = ControlCodec<HostMessage, GatewayMessage>;
/// The gateway's codec.
pub type GatewayCodec = ControlCodec<GatewayMessage, HostMessage>;

impl<Out, In> Default for ControlCodec<Out, In> {
    fn default() -> Self {
        let frames = LengthDelimitedCodec::builder()
            .length_field_type::<u32>()
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec();
        Self { frames, _types: PhantomData }
    }
}

/// Decodes one message body, refusing trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (message, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes { extra: body.len() - used });
    }
    Ok(message)
}

/// Encodes one message body (without the length prefix).
pub fn encode_body<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(message, bincode_config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLong { len: body.len() });
    }
    Ok(body)
}

impl<Out, In: DeserializeOwned> Decoder for ControlCodec<Out, In> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.frames.decode(src) {
            Ok(Some(frame)) => decode_body(&frame).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(frame_error(e, src)),
        }
    }
}

impl<Out: Serialize, In> Encoder<Out> for ControlCodec<Out, In> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let body = encode_body(&item)?;
        self.frames.encode(Bytes::from(body), dst).map_err(|e| frame_error(e, dst))
    }
}

/// LengthDelimitedCodec reports an oversized frame as a plain io::Error;
/// name it, with the length it claimed.
fn frame_error(error: std::io::Error, buf: &BytesMut) -> CodecError {
    if error.kind() == std::io::ErrorKind::InvalidData && buf.len() >= 4 {
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return CodecError::FrameTooLong { len };
        }
    }
    CodecError::Io(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn exact_bytes_of_a_small_message() {
        let mut codec = GatewayCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(GatewayMessage::Cancel { request_id: 7 }, &mut buf).unwrap();
        // Length 2, variant index 5 (Cancel), varint 7.
        assert_eq!(&buf[..], &[0, 0, 0, 2, 5, 7]);
    }

    #[test]
    fn frame_over_the_limit_is_refused_before_buffering() {
        let mut codec = HostCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        buf.extend_from_slice(&[0; 16]);
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLong { len }) => assert_eq!(len, MAX_FRAME_LEN + 1),
            other => panic!("expected FrameTooLong, got {other:?}"),
        }
    }

    #[test]
    fn inner_length_claiming_more_than_the_frame_is_malformed() {
        // Hello { protocol_version: 1, gateway: <string claiming 2^32 bytes> }
        let body = [0u8, 1, 252, 0xff, 0xff, 0xff, 0xff, b'x'];
        let mut codec = HostCodec::default();
        assert!(matches!(codec.decode(&mut frame(&body)), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_and_unknown_tags_are_refused() {
        let mut codec = HostCodec::default();
        assert!(matches!(codec.decode(&mut frame(&[1, 0])), Err(CodecError::TrailingBytes { extra: 1 })));
        assert!(matches!(codec.decode(&mut frame(&[200])), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = HostCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 5][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[9]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(GatewayMessage::Cancel { request_id: 9 }));
    }

    fn any_gateway_message() -> impl Strategy<Value = GatewayMessage> {
        let slot = (any::<u32>(), any::<u64>()).prop_map(|(index, generation)| SlotRef { index, generation });
        prop_oneof![
            (any::<u32>(), ".{0,40}").prop_map(|(protocol_version, gateway)| GatewayMessage::Hello { protocol_version, gateway }),
            Just(GatewayMessage::SegmentMapped),
            any::<u64>().prop_map(|request_id| GatewayMessage::Lease { request_id }),
            slot.clone().prop_map(|slot| GatewayMessage::Release { slot }),
            (
                any::<u64>(),
                slot,
                proptest::option::of(any::<u32>()),
                any::<u64>(),
                "[ -~]{0,64}",
                proptest::option::of(any::<(u32, u8)>()),
                any::<bool>(),
                proptest::option::of(any::<([u8; 16], [u8; 8], u8)>()),
            )
                .prop_map(|(request_id, slot, k, budget_us, tag, jpeg, answer, trace)| {
                    let raw = if answer { Ask::Answer } else { Ask::Tensors };
                    let ask = k.map_or(raw, |k| Ask::TopK { k });
                    let payload = jpeg.map_or(Payload::Input, |(len, orientation)| Payload::Jpeg { len, orientation });
                    let trace = trace.map(|(trace_id, span_id, flags)| crate::TraceParent { trace_id, span_id, flags });
                    GatewayMessage::Infer(InferRequest { request_id, slot, ask, budget_us, tag, payload, trace })
                }),
            any::<u64>().prop_map(|request_id| GatewayMessage::Cancel { request_id }),
        ]
    }

    fn any_host_message() -> impl Strategy<Value = HostMessage> {
        let top = proptest::collection::vec((any::<u32>(), any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan())), 0..20);
        prop_oneof![
            (any::<u64>(), proptest::option::of(top), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
                |(request_id, top, queue_us, inference_us, batch_size)| {
                    let output = top.map_or(Output::InSlot, Output::TopK);
                    let timings = HostTimings { queue_us, inference_us, batch_size };
                    HostMessage::InferDone { request_id, result: Ok(Prediction { output, timings }) }
                }
            ),
            (any::<u64>(), ".{0,40}").prop_map(|(request_id, m)| HostMessage::InferDone {
                request_id,
                result: Err(InferError::Model(m))
            }),
            ".{0,40}".prop_map(|reason| HostMessage::Refused { reason }),
            (any::<u32>(), any::<u32>()).prop_map(|(done, total)| HostMessage::PhaseChanged(Phase::Warming { done, total })),
        ]
    }

    proptest! {
        #[test]
        fn gateway_messages_round_trip(messages in proptest::collection::vec(any_gateway_message(), 1..8)) {
            let mut buf = BytesMut::new();
            let mut enc = GatewayCodec::default();
            for m in &messages { enc.encode(m.clone(), &mut buf).unwrap(); }
            let mut dec = HostCodec::default();
            for m in &messages { let got = dec.decode(&mut buf).unwrap(); prop_assert_eq!(got.as_ref(), Some(m)); }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn host_messages_round_trip(m in any_host_message()) {
            let mut buf = BytesMut::new();
            HostCodec::default().encode(m.clone(), &mut buf).unwrap();
            prop_assert_eq!(GatewayCodec::default().decode(&mut buf).unwrap(), Some(m));
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = HostCodec::default().decode(&mut frame(&body));
            let _ = GatewayCodec::default().decode(&mut frame(&body));
        }
    }
}
