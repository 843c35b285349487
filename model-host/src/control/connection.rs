//! One gateway's control connection: handshake, then a loop that reads a
//! message, dispatches it, and writes the reply. Bytes and framing belong
//! to `protocol::codec`; this file only sees messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use protocol::shm::naming::segment_name;
use protocol::shm::{Segment, ShmError, SlotLayout};
use protocol::{
    Ask, CodecError, GatewayMessage, HostCodec, HostMessage, HostStatus, InferError, InferRequest, MAX_REQUEST_TAG, ModelInfo,
    ModelKind, PROTOCOL_VERSION, Phase, Refusal, SegmentInfo, SlotRef, Welcome, check_hello,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tracing::Instrument;

use crate::counters::{Counters, Refused};
use crate::pipeline::jobs::{Completion, Job, JobQueue};
use crate::control::leases::LeaseTable;

/// A gateway that says nothing for this long after connecting is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection shares.
pub struct HostContext {
    pub model: ModelInfo,
    pub phase: watch::Receiver<Phase>,
    pub jobs: JobQueue,
    pub counters: Arc<Counters>,
    pub slots_per_gateway: u32,
    pub shm_mode: u32,
    pub host_pid: u32,
    /// Who may connect (SO_PEERCRED check in the accept loop).
    pub peers: crate::control::peer_auth::PeerPolicy,
}

#[derive(Debug, Error)]
enum ConnectionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("protocol violation: {0}")]
    Violation(String),
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
                        return Err(e);
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

/// A request the model has not answered yet.
struct Pending {
    slot: SlotRef,
    cancelled: Arc<AtomicBool>,
}

/// Per-connection state: the segment, its leases, the requests in flight.
struct Session<'a> {
    ctx: &'a HostContext,
    segment: Arc<Segment>,
    leases: LeaseTable,
    pending: HashMap<u64, Pending>,
    done_tx: mpsc::UnboundedSender<Completion>,
}

impl<'a> Session<'a> {
    fn new(ctx: &'a HostContext, segment: Segment, done_tx: mpsc::UnboundedSender<Completion>) -> Self {
        ctx.counters.connections.fetch_add(1, Relaxed);
        let leases = LeaseTable::new(segment.layout().slot_count());
        Self { ctx, segment: Arc::new(segment), leases, pending: HashMap::new(), done_tx }
    }

    /// Dispatches one message; Some(reply) to send, Err to close the connection.
    fn handle(&mut self, message: GatewayMessage) -> Result<Option<HostMessage>, ConnectionError> {
        match message {
            GatewayMessage::Lease { request_id } => Ok(Some(self.lease(request_id))),
            GatewayMessage::Release { slot } => {
                self.leases.release(slot).map_err(|e| ConnectionError::Violation(e.to_string()))?;
                self.ctx.counters.leased_slots.fetch_sub(1, Relaxed);
                Ok(None)
            }
            GatewayMessage::Infer(request) => Ok(self.infer(request)),
            GatewayMessage::Cancel { request_id } => {
                if let Some(p) = self.pending.get(&request_id) {
                    p.cancelled.store(true, Relaxed);
                }
                Ok(None)
            }
            GatewayMessage::Status { request_id } => Ok(Some(HostMessage::Status { request_id, status: self.status() })),
            other @ (GatewayMessage::Hello { .. } | GatewayMessage::SegmentMapped) => {
                Err(ConnectionError::Violation(format!("{} after the handshake", other.kind())))
            }
        }
    }

    fn lease(&mut self, request_id: u64) -> HostMessage {
        if !self.ctx.phase.borrow().is_ready() {
            self.ctx.counters.refuse(Refused::NotReady);
            return HostMessage::LeaseRefused { request_id, reason: Refusal::NotReady };
        }
        match self.leases.lease() {
            Some(slot) => {
                self.ctx.counters.leased_slots.fetch_add(1, Relaxed);
                HostMessage::Leased { request_id, slot }
            }
            None => {
                self.ctx.counters.refuse(Refused::NoFreeSlot);
                HostMessage::LeaseRefused { request_id, reason: Refusal::NoFreeSlot }
            }
        }
    }

    /// Checks the request against the lease and the model, then queues it.
    /// Replies only on refusal; the answer otherwise comes from the model.
    fn infer(&mut self, r: InferRequest) -> Option<HostMessage> {
        let counters = &self.ctx.counters;
        let refuse = |error: InferError| {
            counters.refuse(match error {
                InferError::QueueFull => Refused::QueueFull,
                InferError::NotReady => Refused::NotReady,
                _ => Refused::InvalidRequest,
            });
            tracing::debug!(request_id = %r.tag, ?error, "request refused");
            Some(HostMessage::InferDone { request_id: r.request_id, result: Err(error) })
        };
        let top_k = match (r.ask, &self.ctx.model.kind) {
            (Ask::TopK { k }, ModelKind::Classifier { .. }) => k,
            (Ask::Tensors, ModelKind::Tensors(_)) => 0,
            (ask, _) => {
                let _ = self.leases.release(r.slot).map(|()| self.ctx.counters.leased_slots.fetch_sub(1, Relaxed));
                let kind = if self.ctx.model.classifier().is_some() { "an image classifier" } else { "a tensor model" };
                return refuse(InferError::InvalidRequest(format!("{ask:?} asked of {kind}")));
            }
        };
        if r.tag.len() > MAX_REQUEST_TAG {
            let _ = self.leases.release(r.slot).map(|()| self.ctx.counters.leased_slots.fetch_sub(1, Relaxed));
            return refuse(InferError::InvalidRequest(format!(
                "request tag of {} bytes is longer than the {MAX_REQUEST_TAG} allowed",
                r.tag.len()
            )));
        }
        if self.pending.contains_key(&r.request_id) {
            return refuse(InferError::InvalidRequest(format!("request id {} is already in flight", r.request_id)));
        }
        if let Err(e) = self.leases.start_inference(r.slot) {
            return refuse(InferError::InvalidRequest(e.to_string()));
        }
        let arrived = Instant::now();
        let cancelled = Arc::new(AtomicBool::new(false));
        let slot = r.slot;
        let request_id = r.request_id;
        let job = Job {
            request_id,
            slot,
            segment: self.segment.clone(),
            top_k,
            tag: r.tag,
            arrived,
            deadline: arrived + Duration::from_micros(r.budget_us),
            cancelled: cancelled.clone(),
            reply: self.done_tx.clone(),
        };
        match self.ctx.jobs.submit(job) {
            Ok(()) => {
                self.pending.insert(request_id, Pending { slot, cancelled });
                None
            }
            Err((job, error)) => {
                let tag = job.tag.clone();
                self.finish_slot(job.slot);
                self.ctx.counters.refuse(Refused::QueueFull);
                tracing::debug!(request_id = %tag, ?error, "request refused");
                Some(HostMessage::InferDone { request_id, result: Err(error) })
            }
        }
    }

    fn complete(&mut self, done: Completion) -> HostMessage {
        if let Some(p) = self.pending.remove(&done.request_id) {
            debug_assert_eq!(p.slot, done.slot);
        }
        self.finish_slot(done.slot);
        HostMessage::InferDone { request_id: done.request_id, result: done.result }
    }

    fn finish_slot(&mut self, slot: SlotRef) {
        if self.leases.finish_inference(slot).is_ok() {
            self.ctx.counters.leased_slots.fetch_sub(1, Relaxed);
        }
    }

    fn status(&self) -> HostStatus {
        let c = &self.ctx.counters;
        HostStatus {
            pid: self.ctx.host_pid,
            phase: self.ctx.phase.borrow().clone(),
            model_loads: Counters::get32(&c.model_loads),
            connections: Counters::get32(&c.connections),
            leased_slots: Counters::get32(&c.leased_slots),
            requests_done: Counters::get64(&c.requests_done),
            batches_done: Counters::get64(&c.batches_done),
            device: self.ctx.model.device.clone(),
            queue_depth: Counters::get64(&c.in_flight),
            batches_by_size: c.batches_by_size(),
            copy_seconds_total: Counters::get64(&c.copy_us_total) as f64 / 1e6,
            inference_seconds_total: Counters::get64(&c.inference_us_total) as f64 / 1e6,
            refused: c.refused(),
            graph_batch_sizes: c.graphs(),
        }
    }
}

impl Drop for Session<'_> {
    /// The gateway is gone: skip its queued requests and give back its slots
    /// (the lease table and the segment mapping go with this struct).
    fn drop(&mut self) {
        for p in self.pending.values() {
            p.cancelled.store(true, Relaxed);
        }
        self.ctx.counters.leased_slots.fetch_sub(self.leases.in_use(), Relaxed);
        self.ctx.counters.connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
    use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
    use protocol::{GatewayCodec, StartupTimings};

    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "1".into(),
            description: String::new(),
            kind: protocol::ModelKind::Classifier {
                input: protocol::ImageShape { width: 2, height: 2, channels: 1 },
                labels: vec!["a".into(), "b".into()],
            },
            max_batch_size: 1,
            device: "cpu".into(),
        }
    }

    /// A host connection served on a temporary socket, with the phase in
    /// the test's hands, and a gateway's framed end of it.
    async fn connected(phase: watch::Receiver<Phase>) -> (Framed<Stream, GatewayCodec>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("control.sock");
        let name = path.clone().to_fs_name::<GenericFilePath>().expect("socket name");
        let listener = ListenerOptions::new().name(name.clone()).create_tokio().expect("listening");
        let counters = Arc::new(Counters::new(&[1]));
        let (jobs, job_rx) = JobQueue::new(4, counters.clone());
        let ctx = Arc::new(HostContext {
            model: model(),
            phase,
            jobs,
            counters,
            slots_per_gateway: 2,
            shm_mode: 0o600,
            host_pid: std::process::id(),
            peers: crate::control::peer_auth::PeerPolicy::new(&[], &[]).expect("own uid"),
        });
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
