//! One gateway's control connection: handshake, then a loop that reads a
//! message, dispatches it, and writes the reply. Bytes and framing belong
//! to `protocol::codec`; this file only sees messages.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use protocol::shm::naming::segment_name;
use protocol::shm::{Segment, ShmError, SlotLayout};
use protocol::{CodecError, GatewayMessage, HostCodec, HostMessage, PROTOCOL_VERSION, Phase, SegmentInfo, Welcome, check_hello};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tracing::Instrument;

use super::context::HostContext;
use super::session::{Session, Violation};

/// A gateway that says nothing for this long after connecting is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
enum ConnectionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error(transparent)]
    Violation(#[from] Violation),
}

type Channel = Framed<Stream, HostCodec>;

pub async fn serve(stream: Stream, ctx: Arc<HostContext>, connection_id: u64) {
    let span = tracing::info_span!("gateway", connection_id, name = tracing::field::Empty);
    async move {
        match run(stream, &ctx, connection_id).await {
            Ok(()) => tracing::info!("gateway disconnected"),
            Err(e) => tracing::warn!(error = %e, "gateway connection closed"),
        }
    }
    .instrument(span)
    .await
}

async fn run(stream: Stream, ctx: &HostContext, connection_id: u64) -> Result<(), ConnectionError> {
    let mut channel = Framed::new(stream, HostCodec::default());
    // One receiver for the Welcome's snapshot and every later change: a
    // change published after the snapshot is "unseen" on this receiver, so
    // the loop below sends it, however the handshake and warm-up interleave.
    let mut phase = ctx.phase.clone();
    let segment = handshake(&mut channel, ctx, &mut phase, connection_id).await?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut session = Session::new(ctx, segment, done_tx);
    tracing::info!(slots = ctx.slots_per_gateway, "gateway connected");
    loop {
        let reply = tokio::select! {
            frame = channel.next() => match frame {
                None => return Ok(()),
                Some(Err(e)) => {
                    let _ = channel.send(HostMessage::Violation { reason: e.to_string() }).await;
                    return Err(e.into());
                }
                Some(Ok(message)) => match session.handle(message) {
                    Ok(reply) => reply,
                    Err(e) => {
                        let _ = channel.send(HostMessage::Violation { reason: e.to_string() }).await;
                        return Err(e.into());
                    }
                },
            },
            Some(done) = done_rx.recv() => Some(session.complete(done)),
            Ok(()) = phase.changed() => Some(HostMessage::PhaseChanged(phase.borrow_and_update().clone())),
        };
        if let Some(reply) = reply {
            channel.send(reply).await?;
        }
    }
}

/// Hello -> Welcome -> SegmentMapped, then unlink the segment's name.
async fn handshake(
    channel: &mut Channel,
    ctx: &HostContext,
    phase: &mut watch::Receiver<Phase>,
    connection_id: u64,
) -> Result<Segment, ConnectionError> {
    let hello = next_within(channel, HANDSHAKE_TIMEOUT).await?;
    let gateway = match check_hello(&hello) {
        Ok(name) => name.to_string(),
        Err(e) => {
            let _ = channel.send(HostMessage::Refused { reason: e.to_string() }).await;
            return Err(ConnectionError::Handshake(e.to_string()));
        }
    };
    tracing::Span::current().record("name", gateway.as_str());
    let layout = SlotLayout::new(ctx.slots_per_gateway, ctx.model.slot_len()).map_err(ShmError::from)?;
    let name = segment_name(ctx.host_pid, connection_id);
    let mut segment = Segment::create(&name, layout, ctx.shm_mode)?;
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        host_pid: ctx.host_pid,
        model: ctx.model.clone(),
        segment: SegmentInfo { os_id: name, slot_count: layout.slot_count(), slot_size: layout.slot_size() },
        // Marks this value seen on the loop's receiver: only later changes follow.
        phase: phase.borrow_and_update().clone(),
    };
    channel.send(HostMessage::Welcome(welcome)).await?;
    match next_within(channel, HANDSHAKE_TIMEOUT).await? {
        GatewayMessage::SegmentMapped => {}
        other => return Err(ConnectionError::Handshake(format!("expected SegmentMapped, got {}", other.kind()))),
    }
    // Both sides have it mapped: from here no crash can leave it in /dev/shm.
    segment.unlink()?;
    Ok(segment)
}

async fn next_within(channel: &mut Channel, limit: Duration) -> Result<GatewayMessage, ConnectionError> {
    match tokio::time::timeout(limit, channel.next()).await {
        Err(_) => Err(ConnectionError::Handshake(format!("nothing received within {limit:?}"))),
        Ok(None) => Err(ConnectionError::Handshake("closed during handshake".into())),
        Ok(Some(frame)) => Ok(frame?),
    }
}

#[cfg(test)]
mod tests {
    use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
    use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
    use protocol::{GatewayCodec, StartupTimings};

    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// A host connection served on a temporary socket, with the phase in
    /// the test's hands, and a gateway's framed end of it.
    async fn connected(phase: watch::Receiver<Phase>) -> (Framed<Stream, GatewayCodec>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("control.sock");
        let name = path.clone().to_fs_name::<GenericFilePath>().expect("socket name");
        let listener = ListenerOptions::new().name(name.clone()).create_tokio().expect("listening");
        let (ctx, job_rx) = HostContext::for_test(HostContext::test_classifier(), phase);
        let ctx = Arc::new(ctx);
        // Segment names are `<pid>.<connection id>`: tests running side by
        // side in this process need ids of their own, or one's segment
        // creation fails on the other's name.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let connection_id = NEXT_ID.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _keep_queue_open = job_rx;
            let stream = listener.accept().await.expect("accept");
            serve(stream, ctx, connection_id).await;
        });
        let stream = Stream::connect(name).await.expect("connect");
        (Framed::new(stream, GatewayCodec::default()), dir)
    }

    async fn next(gateway: &mut Framed<Stream, GatewayCodec>) -> Option<HostMessage> {
        match tokio::time::timeout(Duration::from_secs(5), gateway.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            _ => None,
        }
    }

    /// The host becomes ready after it sent the Welcome (warming) and before
    /// the gateway has mapped its segment: the gateway must still be told.
    /// This interleaving lost the update when the loop's receiver was taken
    /// after the handshake and marked unchanged.
    #[tokio::test]
    async fn a_phase_change_during_the_handshake_reaches_the_gateway() {
        let (phase_tx, phase_rx) = watch::channel(Phase::Warming { done: 0, total: 1 });
        let (mut gateway, _dir) = connected(phase_rx).await;
        let hello = GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION, gateway: "test".into() };
        gateway.send(hello).await.expect("hello");
        let welcome = match next(&mut gateway).await {
            Some(HostMessage::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        assert_eq!(welcome.phase.name(), "warming");
        let segment = Segment::open(
            &welcome.segment.os_id,
            SlotLayout::new(welcome.segment.slot_count, welcome.segment.slot_size).expect("layout"),
        )
        .expect("mapping the segment");
        phase_tx.send_replace(Phase::Ready(StartupTimings::default()));
        gateway.send(GatewayMessage::SegmentMapped).await.expect("mapped");
        match next(&mut gateway).await {
            Some(HostMessage::PhaseChanged(p)) => assert!(p.is_ready(), "told {p:?}"),
            other => panic!("the gateway was never told the host is ready: {other:?}"),
        }
        drop(segment);
    }

    /// The plain order: the phase the Welcome carries is not sent again,
    /// and a change after the handshake is sent once.
    #[tokio::test]
    async fn the_welcome_phase_is_not_repeated_and_later_changes_follow() {
        let (phase_tx, phase_rx) = watch::channel(Phase::Ready(StartupTimings::default()));
        let (mut gateway, _dir) = connected(phase_rx).await;
        let hello = GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION, gateway: "test".into() };
        gateway.send(hello).await.expect("hello");
        let Some(HostMessage::Welcome(welcome)) = next(&mut gateway).await else { panic!("no Welcome") };
        assert!(welcome.phase.is_ready());
        let layout = SlotLayout::new(welcome.segment.slot_count, welcome.segment.slot_size).expect("layout");
        let _segment = Segment::open(&welcome.segment.os_id, layout).expect("mapping the segment");
        gateway.send(GatewayMessage::SegmentMapped).await.expect("mapped");
        // A Status round trip proves the loop runs; no PhaseChanged comes first.
        gateway.send(GatewayMessage::Status { request_id: 7 }).await.expect("status");
        match next(&mut gateway).await {
            Some(HostMessage::Status { request_id: 7, .. }) => {}
            other => panic!("expected the Status answer first, got {other:?}"),
        }
        phase_tx.send_replace(Phase::Draining);
        match next(&mut gateway).await {
            Some(HostMessage::PhaseChanged(Phase::Draining)) => {}
            other => panic!("expected PhaseChanged(Draining), got {other:?}"),
        }
    }
}
