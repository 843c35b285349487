//! One gateway connection's state and what each message does to it: the
//! slots it leased, the requests it has in flight, its answers. No I/O:
//! [`super::connection`] reads a message, calls [`Session::handle`], and
//! writes what comes back; the model's answers come through
//! [`Session::complete`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use protocol::shm::Segment;
use protocol::{
    Ask, GatewayMessage, HostMessage, HostStatus, InferError, InferRequest, MAX_REQUEST_TAG, ModelKind, Payload, Refusal, SlotRef,
};
use thiserror::Error;
use tokio::sync::mpsc;

use super::context::HostContext;
use super::leases::LeaseTable;
use crate::counters::{Counters, Refused};
use crate::pipeline::jobs::{Completion, Job};
use crate::pipeline::spans::RequestSpans;

/// The gateway broke the protocol: the connection is closed after saying so.
#[derive(Debug, Error)]
#[error("protocol violation: {0}")]
pub struct Violation(pub String);

/// A request the model has not answered yet.
struct Pending {
    slot: SlotRef,
    cancelled: Arc<AtomicBool>,
}

/// Per-connection state: the segment, its leases, the requests in flight.
pub struct Session<'a> {
    ctx: &'a HostContext,
    segment: Arc<Segment>,
    leases: LeaseTable,
    pending: HashMap<u64, Pending>,
    done_tx: mpsc::UnboundedSender<Completion>,
}

impl<'a> Session<'a> {
    pub fn new(ctx: &'a HostContext, segment: Segment, done_tx: mpsc::UnboundedSender<Completion>) -> Self {
        ctx.counters.connections.fetch_add(1, Relaxed);
        let leases = LeaseTable::new(segment.layout().slot_count());
        Self { ctx, segment: Arc::new(segment), leases, pending: HashMap::new(), done_tx }
    }

    /// Dispatches one message; Some(reply) to send, Err to close the connection.
    pub fn handle(&mut self, message: GatewayMessage) -> Result<Option<HostMessage>, Violation> {
        match message {
            GatewayMessage::Lease { request_id } => Ok(Some(self.lease(request_id))),
            GatewayMessage::Release { slot } => {
                self.leases.release(slot).map_err(|e| Violation(e.to_string()))?;
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
            job @ (GatewayMessage::JobSubmit(_)
            | GatewayMessage::JobStatus { .. }
            | GatewayMessage::JobCancel { .. }
            | GatewayMessage::JobResult { .. }) => Ok(super::job_calls::answer(self.ctx, job)),
            other @ (GatewayMessage::Hello { .. } | GatewayMessage::SegmentMapped) => {
                Err(Violation(format!("{} after the handshake", other.kind())))
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
            (Ask::Tensors, ModelKind::Tensors(_) | ModelKind::Vision(_)) | (Ask::Answer, ModelKind::Vision(_)) => 0,
            (ask, _) => {
                self.release_unsent(r.slot);
                let kind = match self.ctx.model.kind {
                    ModelKind::Classifier { .. } => "an image classifier",
                    ModelKind::Tensors(_) => "a tensor model",
                    ModelKind::Vision(_) => "a vision model",
                    ModelKind::Iterative(_) => "an iterative model (send it jobs)",
                };
                return refuse(InferError::InvalidRequest(format!("{ask:?} asked of {kind}")));
            }
        };
        if r.tag.len() > MAX_REQUEST_TAG {
            self.release_unsent(r.slot);
            return refuse(InferError::InvalidRequest(format!(
                "request tag of {} bytes is longer than the {MAX_REQUEST_TAG} allowed",
                r.tag.len()
            )));
        }
        if let Err(problem) = self.check_payload(r.payload) {
            self.release_unsent(r.slot);
            return refuse(InferError::InvalidRequest(problem));
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
        let spans = RequestSpans::start(r.trace, &r.tag, r.payload != Payload::Input);
        let job = Job {
            request_id,
            slot,
            segment: self.segment.clone(),
            top_k,
            answer: r.ask == Ask::Answer,
            payload: r.payload,
            decoded: None,
            tag: r.tag,
            arrived,
            deadline: arrived + Duration::from_micros(r.budget_us),
            cancelled: cancelled.clone(),
            reply: self.done_tx.clone(),
            spans,
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

    /// Gives back the slot of a request refused before it was queued.
    fn release_unsent(&mut self, slot: SlotRef) {
        let _ = self.leases.release(slot).map(|()| self.ctx.counters.leased_slots.fetch_sub(1, Relaxed));
    }

    /// A JPEG in the slot only to a host that offered to decode (a model
    /// that takes images: a classifier or a vision model), within the slot
    /// and the offer's size, with an EXIF orientation that exists.
    fn check_payload(&self, payload: Payload) -> Result<(), String> {
        let Payload::Jpeg { len, orientation } = payload else {
            return Ok(());
        };
        let Some(offer) = self.ctx.model.host_decode else {
            return Err("a JPEG in the slot, but this host does not decode JPEGs (decode = \"gateway\" or no GPU decoder)".into());
        };
        let most = offer.max_bytes.min(self.segment.layout().slot_size());
        if len == 0 || u64::from(len) > most {
            return Err(format!("a JPEG of {len} bytes in the slot; 1..={most} allowed"));
        }
        if !(1..=8).contains(&orientation) {
            return Err(format!("EXIF orientation {orientation} is not 1-8"));
        }
        Ok(())
    }

    pub fn complete(&mut self, done: Completion) -> HostMessage {
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
            jpegs_decoded: Counters::get64(&c.jpegs_decoded),
            graph_batch_sizes: c.graphs(),
            jobs: self.ctx.job_table.as_ref().map(|t| t.counts()),
            memory: self.ctx.resources.report(c),
            spans_dropped: spans_dropped(),
        }
    }
}

/// The spans this host never exported, by reason, while it exports any.
fn spans_dropped() -> Vec<(String, u64)> {
    if !service::telemetry::enabled() {
        return Vec::new();
    }
    service::telemetry::DROPPED.by_reason().into_iter().map(|(reason, n)| (reason.to_string(), n)).collect()
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
    use std::sync::atomic::AtomicU64;

    use protocol::shm::SlotLayout;
    use protocol::shm::naming::segment_name;
    use protocol::{Output, Phase, Prediction, StartupTimings};
    use tokio::sync::watch;

    use super::*;

    fn context(kind: ModelKind, ready: bool) -> (HostContext, crate::pipeline::jobs::Queues, watch::Sender<Phase>) {
        let phase = if ready { Phase::Ready(StartupTimings::default()) } else { Phase::Warming { done: 0, total: 1 } };
        let (phase_tx, phase) = watch::channel(phase);
        let (ctx, job_rx) = HostContext::for_test(kind, phase);
        (ctx, job_rx, phase_tx)
    }

    fn classifier() -> ModelKind {
        HostContext::test_classifier()
    }

    fn segment() -> Segment {
        static NEXT: AtomicU64 = AtomicU64::new(5_000_000);
        Segment::create(&segment_name(std::process::id(), NEXT.fetch_add(1, Relaxed)), SlotLayout::new(2, 4).unwrap(), 0o600).unwrap()
    }

    fn infer(request_id: u64, slot: SlotRef, ask: Ask) -> GatewayMessage {
        GatewayMessage::Infer(InferRequest { request_id, slot, ask, budget_us: 5_000_000, tag: "t".into(), payload: Payload::Input, trace: None })
    }

    fn leased(reply: Option<HostMessage>) -> SlotRef {
        match reply {
            Some(HostMessage::Leased { slot, .. }) => slot,
            other => panic!("expected Leased, got {other:?}"),
        }
    }

    #[test]
    fn leases_run_out_and_come_back_with_the_answer() {
        let (ctx, jobs, _phase) = context(classifier(), true);
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let mut session = Session::new(&ctx, segment(), done_tx);
        let a = leased(session.handle(GatewayMessage::Lease { request_id: 1 }).unwrap());
        let _b = leased(session.handle(GatewayMessage::Lease { request_id: 2 }).unwrap());
        let refused = session.handle(GatewayMessage::Lease { request_id: 3 }).unwrap();
        assert_eq!(refused, Some(HostMessage::LeaseRefused { request_id: 3, reason: Refusal::NoFreeSlot }));
        // An Infer is queued (no reply yet); its answer frees the slot.
        assert_eq!(session.handle(infer(4, a, Ask::TopK { k: 1 })).unwrap(), None);
        let job = jobs.ready.try_recv().expect("the Infer reached the job queue");
        assert_eq!((job.request_id, job.top_k), (4, 1));
        let answer = Ok(Prediction { output: Output::TopK(vec![(1, 0.9)]), timings: Default::default() });
        let reply = session.complete(Completion { request_id: 4, slot: a, result: answer.clone() });
        assert_eq!(reply, HostMessage::InferDone { request_id: 4, result: answer });
        leased(session.handle(GatewayMessage::Lease { request_id: 5 }).unwrap());
    }

    #[test]
    fn an_ask_of_the_other_kind_is_refused_and_frees_the_slot() {
        let (ctx, jobs, _phase) = context(classifier(), true);
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let mut session = Session::new(&ctx, segment(), done_tx);
        let slot = leased(session.handle(GatewayMessage::Lease { request_id: 1 }).unwrap());
        match session.handle(infer(2, slot, Ask::Tensors)).unwrap() {
            Some(HostMessage::InferDone { request_id: 2, result: Err(InferError::InvalidRequest(why)) }) => {
                assert!(why.contains("image classifier"), "{why}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(jobs.ready.try_recv().is_err(), "nothing reached the model");
        // The slot is free again: both slots can be leased.
        leased(session.handle(GatewayMessage::Lease { request_id: 3 }).unwrap());
        leased(session.handle(GatewayMessage::Lease { request_id: 4 }).unwrap());
    }

    #[test]
    fn a_jpeg_payload_needs_the_offer_the_slot_and_an_orientation() {
        let (mut ctx, jobs, _phase) = context(classifier(), true);
        let jpeg = |len, orientation| Payload::Jpeg { len, orientation };
        let refusal = |ctx: &HostContext, payload: Payload| {
            let (done_tx, _done_rx) = mpsc::unbounded_channel();
            let mut session = Session::new(ctx, segment(), done_tx);
            let slot = leased(session.handle(GatewayMessage::Lease { request_id: 1 }).unwrap());
            let request = InferRequest { request_id: 2, slot, ask: Ask::TopK { k: 1 }, budget_us: 5_000_000, tag: "t".into(), payload, trace: None };
            match session.handle(GatewayMessage::Infer(request)).unwrap() {
                Some(HostMessage::InferDone { result: Err(InferError::InvalidRequest(why)), .. }) => Some(why),
                None => None,
                other => panic!("{other:?}"),
            }
        };
        let why = refusal(&ctx, jpeg(3, 1)).expect("no offer");
        assert!(why.contains("does not decode JPEGs"), "{why}");
        ctx.model.host_decode = Some(protocol::HostDecode { policy: protocol::DecodePolicy::Always, max_bytes: 3, max_pixels: 100 });
        // The test segment's slots are 4 bytes; the offer allows 3.
        assert!(refusal(&ctx, jpeg(4, 1)).expect("over the offer").contains("1..=3"));
        assert!(refusal(&ctx, jpeg(0, 1)).expect("empty").contains("0 bytes"));
        assert!(refusal(&ctx, jpeg(3, 9)).expect("no such orientation").contains("orientation 9"));
        assert!(jobs.ready.try_recv().is_err() && jobs.jpegs.try_recv().is_err(), "nothing reached the model");
        assert_eq!(refusal(&ctx, jpeg(3, 6)), None, "queued");
        assert_eq!(jobs.jpegs.try_recv().expect("queued for the decode stage").payload, jpeg(3, 6));
        assert!(jobs.ready.try_recv().is_err(), "not for the batcher before its decode");
    }

    #[test]
    fn not_ready_refuses_leases_and_protocol_breaches_are_violations() {
        let (ctx, _jobs, phase) = context(classifier(), false);
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let mut session = Session::new(&ctx, segment(), done_tx);
        let refused = session.handle(GatewayMessage::Lease { request_id: 1 }).unwrap();
        assert_eq!(refused, Some(HostMessage::LeaseRefused { request_id: 1, reason: Refusal::NotReady }));
        phase.send_replace(Phase::Ready(StartupTimings::default()));
        leased(session.handle(GatewayMessage::Lease { request_id: 2 }).unwrap());
        assert!(session.handle(GatewayMessage::SegmentMapped).is_err(), "a second SegmentMapped");
        assert!(session.handle(GatewayMessage::Release { slot: SlotRef { index: 1, generation: 99 } }).is_err(), "Release of a slot never leased");
    }

    #[test]
    fn cancel_marks_the_queued_job_and_dropping_the_session_cancels_the_rest() {
        let (ctx, jobs, _phase) = context(classifier(), true);
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let mut session = Session::new(&ctx, segment(), done_tx);
        let a = leased(session.handle(GatewayMessage::Lease { request_id: 1 }).unwrap());
        let b = leased(session.handle(GatewayMessage::Lease { request_id: 2 }).unwrap());
        session.handle(infer(3, a, Ask::TopK { k: 1 })).unwrap();
        session.handle(infer(4, b, Ask::TopK { k: 1 })).unwrap();
        let (first, second) = (jobs.ready.try_recv().unwrap(), jobs.ready.try_recv().unwrap());
        session.handle(GatewayMessage::Cancel { request_id: 3 }).unwrap();
        assert!(first.is_cancelled() && !second.is_cancelled());
        drop(session);
        assert!(second.is_cancelled(), "a gone gateway's queued requests are skipped");
        assert_eq!(Counters::get32(&ctx.counters.leased_slots), 0, "and its slots given back");
    }
}
