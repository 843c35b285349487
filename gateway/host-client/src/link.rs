//! One live connection to the host.
//!
//! A writer task owns the socket's send half and drains an unbounded
//! outbox; the reader (a future the caller drives) routes each answer to
//! the request waiting for it by request id. When the connection ends,
//! every waiting request fails at once: none hangs, none gets another's
//! answer.
//!
//! The gateway counts its slots itself, with one semaphore permit per slot
//! that the host may consider taken: acquired before a Lease is sent, and
//! let go only once the host's answer settles the slot (LeaseRefused, an
//! InferDone, or a Release sent for a lease nobody wants). So a request
//! that finds every slot busy waits here for one, up to its deadline and
//! behind at most `max_waiting` others, instead of being refused by the
//! host: a burst (a gateway restarted on a held socket accepts everything
//! that queued meanwhile) is served, not answered 503.
//!
//! A tensor model's outputs are in the request's slot when its answer
//! arrives; the reader copies them out before it reads the next message,
//! so no later lease of that slot (which can only come after, on this same
//! ordered stream) can overwrite them first.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::shm::{Segment, SlotLayout};
use protocol::{Ask, GatewayCodec, GatewayMessage, HostMessage, HostStatus, ModelInfo, PROTOCOL_VERSION, Phase, Welcome};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::codec::Framed;

use super::HostCallError;
use super::trust::HostTrust;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Link {
    outbox: mpsc::UnboundedSender<GatewayMessage>,
    /// Requests waiting for an answer, by request id.
    pending: Mutex<HashMap<u64, Waiter>>,
    /// Set once the connection is gone; checked under `pending`'s lock.
    closed: AtomicBool,
    /// This connection's slots, mapped.
    segment: Segment,
    welcome: Welcome,
    /// Bytes of a slot's output area an answer fills, for [`Ask::Tensors`]
    /// and for [`Ask::Answer`]: fixed by the model, so worked out once.
    outputs_len: (u64, u64),
    phase: watch::Sender<Phase>,
    next_request_id: AtomicU64,
    /// One permit per slot of `segment` (see the module's doc).
    slots: Arc<Semaphore>,
    /// Requests waiting for a permit now, and the most that may.
    waiting: AtomicU64,
    max_waiting: u64,
    /// Requests routed here and not finished (see [`super::Route`]): they
    /// count from the routing decision on, before their body is read and
    /// their slot taken, so that a burst is spread, not sent to whichever
    /// host looked idle when it arrived.
    routed: AtomicU64,
}

/// The bytes of a slot's output area an answer to `ask` fills: all the
/// outputs, or for a segmenter's 8-bit answer its mask's bytes only.
fn outputs_len(model: &protocol::ModelInfo, ask: Ask) -> u64 {
    let all = model.tensors().map_or(0, |t| t.output_bytes());
    match (ask, model.vision().map(|v| (v, &v.task))) {
        (Ask::Answer, Some((v, protocol::vision::VisionTask::Segmentation(s)))) if s.answer_is_8bit() => {
            let at = v.signature.output_placements()[0];
            (at.offset + u64::from(s.width) * u64::from(s.height)).min(all)
        }
        _ => all,
    }
}

/// One request waiting for its answer.
struct Waiter {
    /// None once the caller gave up; the entry stays while it holds a permit,
    /// so that the slot counts as taken until the host's answer frees it.
    answer: Option<oneshot::Sender<Answer>>,
    /// The slot to copy a tensor model's outputs out of, for an Infer, and
    /// how many bytes of them (see [`outputs_len`]).
    read_back: Option<(u32, u64)>,
    /// The slot's permit, for a Lease or an Infer.
    permit: Option<OwnedSemaphorePermit>,
}

/// A host message, with the outputs it left in the slot (tensor models).
pub struct Answer {
    pub message: HostMessage,
    pub outputs: Vec<u8>,
    /// For Leased: the slot's permit, which the lease holds from here on.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The reader: resolves with the reason the connection ended.
pub type Reader = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

impl Link {
    /// Connects, checks that the listener runs as a trusted user (before a
    /// byte is sent: a host gets users' images), and runs the handshake:
    /// Hello, Welcome, map, SegmentMapped.
    pub async fn connect(socket: &Path, gateway_name: &str, max_waiting: u64, trust: &HostTrust) -> Result<(Arc<Link>, Reader), String> {
        let stream = UnixStream::connect(socket).await.map_err(|e| format!("connect: {e}"))?;
        let peer = stream.peer_cred().map_err(|e| format!("reading the host's credentials: {e}"))?;
        if !trust.allows(peer.uid()) {
            return Err(format!(
                "the process on this socket (pid {:?}) runs as uid {}, not a trusted host user (--allowed-host-uids: {:?})",
                peer.pid(),
                peer.uid(),
                trust.uids()
            ));
        }
        let mut channel = Framed::new(stream, GatewayCodec::default());
        let hello = GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION, gateway: gateway_name.to_string() };
        channel.send(hello).await.map_err(|e| e.to_string())?;
        let welcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, channel.next()).await {
            Ok(Some(Ok(HostMessage::Welcome(w)))) => w,
            Ok(Some(Ok(HostMessage::Refused { reason }))) => return Err(format!("host refused us: {reason}")),
            Ok(Some(Ok(other))) => return Err(format!("expected Welcome, got {other:?}")),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("host closed during the handshake".into()),
            Err(_) => return Err("no welcome from the host within 5 s".into()),
        };
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "the host speaks protocol version {}, this gateway {PROTOCOL_VERSION}: upgrade them together",
                welcome.protocol_version
            ));
        }
        let layout = SlotLayout::new(welcome.segment.slot_count, welcome.segment.slot_size).map_err(|e| e.to_string())?;
        if layout.slot_size() < welcome.model.slot_len() {
            return Err("host's slots are smaller than the model input".into());
        }
        let segment = Segment::open(&welcome.segment.os_id, layout).map_err(|e| e.to_string())?;
        channel.send(GatewayMessage::SegmentMapped).await.map_err(|e| e.to_string())?;

        let (mut sink, mut stream) = channel.split();
        let (link, mut outbox_rx) = Link::new(welcome, segment, max_waiting);
        tokio::spawn(async move {
            // Feed everything queued, then flush once: one syscall for a burst.
            while let Some(message) = outbox_rx.recv().await {
                if sink.feed(message).await.is_err() {
                    return;
                }
                while let Ok(message) = outbox_rx.try_recv() {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let reader_link = link.clone();
        let reader = Box::pin(async move {
            loop {
                match stream.next().await {
                    None => return "host closed the connection".to_string(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(HostMessage::Violation { reason })) => return format!("host says we broke the protocol: {reason}"),
                    Some(Ok(message)) => reader_link.route(message),
                }
            }
        });
        Ok((link, reader))
    }

    /// A link over a mapped segment, before any I/O: what it sends goes to
    /// the returned receiver (the writer task's, or a test's).
    fn new(welcome: Welcome, segment: Segment, max_waiting: u64) -> (Arc<Link>, mpsc::UnboundedReceiver<GatewayMessage>) {
        let (outbox, outbox_rx) = mpsc::unbounded_channel::<GatewayMessage>();
        let (phase, _) = watch::channel(welcome.phase.clone());
        let slots = Arc::new(Semaphore::new(welcome.segment.slot_count as usize));
        let outputs_len = (outputs_len(&welcome.model, Ask::Tensors), outputs_len(&welcome.model, Ask::Answer));
        let link = Arc::new(Link {
            outbox,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            segment,
            welcome,
            outputs_len,
            phase,
            next_request_id: AtomicU64::new(1),
            slots,
            waiting: AtomicU64::new(0),
            max_waiting,
            routed: AtomicU64::new(0),
        });
        (link, outbox_rx)
    }

    /// Hands one host message to whoever waits for it (see the module's doc).
    fn route(&self, message: HostMessage) {
        let id = match &message {
            HostMessage::PhaseChanged(phase) => {
                tracing::info!(phase = phase.name(), "host phase");
                self.phase.send_replace(phase.clone());
                return;
            }
            HostMessage::Leased { request_id, .. }
            | HostMessage::LeaseRefused { request_id, .. }
            | HostMessage::InferDone { request_id, .. }
            | HostMessage::Status { request_id, .. }
            | HostMessage::Job { request_id, .. }
            | HostMessage::JobResult { request_id, .. } => *request_id,
            other => {
                tracing::warn!(message = ?other, "unexpected message from the host");
                return;
            }
        };
        let Some(mut waiter) = self.pending.lock().expect("pending lock poisoned").remove(&id) else { return };
        // The slot's fate is settled by this answer unless it is a lease
        // that someone still wants: then the permit goes with the lease.
        let permit = match (&message, waiter.answer.is_some()) {
            (HostMessage::Leased { .. }, true) => waiter.permit.take(),
            _ => None,
        };
        let Some(answer) = waiter.answer else {
            // Nobody waits for it any more.
            return self.unread(Answer { message, outputs: Vec::new(), permit: waiter.permit });
        };
        let outputs = match (&message, waiter.read_back) {
            (HostMessage::InferDone { result: Ok(_), .. }, Some((index, len))) => self.read_outputs(index, len),
            _ => Ok(Vec::new()),
        };
        let answer_of = match outputs {
            Ok(outputs) => Answer { message, outputs, permit },
            Err(e) => {
                let message = HostMessage::InferDone { request_id: id, result: Err(protocol::InferError::Model(e)) };
                Answer { message, outputs: Vec::new(), permit }
            }
        };
        if let Err(unread) = answer.send(answer_of) {
            // The waiter gave up between the lookup and now.
            self.unread(unread);
        }
    }

    /// Settles an answer nobody will read (its request gave up before or
    /// after it came): a slot granted to nobody goes straight back to the
    /// host, and its permit only once the Release is queued, ahead of any
    /// later Lease on the same stream.
    fn unread(&self, answer: Answer) {
        if let HostMessage::Leased { slot, .. } = answer.message {
            self.send(GatewayMessage::Release { slot });
        }
        drop(answer.permit);
    }

    /// Copies the first `len` bytes of a tensor model's outputs out of slot `index`.
    fn read_outputs(&self, index: u32, len: u64) -> Result<Vec<u8>, String> {
        let mut outputs = vec![0; len as usize];
        self.segment.read_slot(index, &mut outputs).map_err(|e| format!("reading the outputs from slot {index}: {e}"))?;
        Ok(outputs)
    }

    /// Marks the link dead and fails every waiting request, those waiting
    /// for a slot included.
    pub fn close(&self) {
        let mut pending = self.pending.lock().expect("pending lock poisoned");
        self.closed.store(true, Relaxed);
        pending.clear();
        self.slots.close();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    pub fn model(&self) -> &ModelInfo {
        &self.welcome.model
    }

    pub fn host_pid(&self) -> u32 {
        self.welcome.host_pid
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub(super) fn segment(&self) -> &Segment {
        &self.segment
    }

    pub fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Relaxed)
    }

    /// Sends without waiting for an answer (Release, Cancel).
    pub(super) fn send(&self, message: GatewayMessage) {
        let _ = self.outbox.send(message);
    }

    /// Registers a waiter for `request_id` (holding `permit`, if any, until
    /// the host answers), then sends `message`.
    pub(super) fn request(
        &self,
        request_id: u64,
        message: GatewayMessage,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<oneshot::Receiver<Answer>, HostCallError> {
        let (tx, rx) = oneshot::channel();
        let read_back = match &message {
            GatewayMessage::Infer(r) if r.ask == Ask::Tensors => Some((r.slot.index, self.outputs_len.0)),
            GatewayMessage::Infer(r) if r.ask == Ask::Answer => Some((r.slot.index, self.outputs_len.1)),
            _ => None,
        };
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            if self.is_closed() {
                return Err(HostCallError::Unavailable { phase: "disconnected".into() });
            }
            pending.insert(request_id, Waiter { answer: Some(tx), read_back, permit });
        }
        if self.outbox.send(message).is_err() {
            self.forget(request_id);
            return Err(HostCallError::Unavailable { phase: "disconnected".into() });
        }
        Ok(rx)
    }

    /// Drops the waiter for a request its caller gave up on; one holding a
    /// slot's permit stays, answerless, until the host's answer frees it.
    pub(super) fn forget(&self, request_id: u64) {
        let mut pending = self.pending.lock().expect("pending lock poisoned");
        match pending.get_mut(&request_id) {
            Some(waiter) if waiter.permit.is_some() => waiter.answer = None,
            Some(_) => {
                pending.remove(&request_id);
            }
            None => {}
        }
    }

    /// Waits for one of this gateway's slots to be free at the host, behind
    /// at most `max_waiting` other requests (past that: Overloaded at once).
    pub(super) async fn slot_permit(&self) -> Result<OwnedSemaphorePermit, HostCallError> {
        let closed = || HostCallError::Unavailable { phase: "disconnected".into() };
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let _waiting = WaitingGuard::enter(&self.waiting, self.max_waiting)?;
        self.slots.clone().acquire_owned().await.map_err(|_| closed())
    }

    /// Requests waiting for a slot now (for tests and metrics).
    pub fn waiting_for_slots(&self) -> u64 {
        self.waiting.load(Relaxed)
    }

    /// Requests of this gateway the host has or is about to get: those
    /// routed here and not finished, or, if more, the slots taken (a
    /// request whose caller left keeps its slot until the host answers)
    /// plus the requests waiting for one. Routing picks the replica where
    /// this is lowest.
    pub fn outstanding(&self) -> u64 {
        let taken = (self.welcome.segment.slot_count as usize).saturating_sub(self.slots.available_permits());
        self.routed.load(Relaxed).max(taken as u64 + self.waiting_for_slots())
    }

    /// A request routed here starts (`true`) or ends (`false`).
    pub(super) fn count_routed(&self, starts: bool) {
        if starts {
            self.routed.fetch_add(1, Relaxed);
        } else {
            self.routed.fetch_sub(1, Relaxed);
        }
    }

    pub async fn status(self: &Arc<Self>) -> Result<HostStatus, HostCallError> {
        let request_id = self.next_request_id();
        let answer = self.request(request_id, GatewayMessage::Status { request_id }, None)?;
        match RequestGuard::new(self, request_id, answer).wait().await?.message {
            HostMessage::Status { status, .. } => Ok(status),
            other => Err(HostCallError::Rejected(format!("unexpected answer to Status: {other:?}"))),
        }
    }
}

/// A request's wait for its answer. Dropped before the answer is read (the
/// caller gave up: a deadline, a client gone, a request that failed
/// beside its lease), it forgets the request; an answer that came but was
/// not read is settled as if it had come after (see [`Link::unread`]).
pub(super) struct RequestGuard<'a> {
    link: &'a Link,
    request_id: u64,
    /// None once the answer is read.
    answer: Option<oneshot::Receiver<Answer>>,
}

impl<'a> RequestGuard<'a> {
    pub fn new(link: &'a Link, request_id: u64, answer: oneshot::Receiver<Answer>) -> Self {
        Self { link, request_id, answer: Some(answer) }
    }

    pub async fn wait(mut self) -> Result<Answer, HostCallError> {
        let answer = self.answer.as_mut().expect("the receiver is only taken here and on drop");
        let result = answer.await.map_err(|_| HostCallError::Unavailable { phase: "disconnected".into() });
        self.answer = None;
        result
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else { return };
        self.link.forget(self.request_id);
        // Closed first: from here the reader's send fails and it settles
        // the answer itself; one sent before is here to settle.
        answer.close();
        if let Ok(unread) = answer.try_recv() {
            self.link.unread(unread);
        }
    }
}

/// Counts one request among those waiting for a slot while it lives.
struct WaitingGuard<'a>(&'a AtomicU64);

impl<'a> WaitingGuard<'a> {
    fn enter(waiting: &'a AtomicU64, max: u64) -> Result<Self, HostCallError> {
        if waiting.fetch_add(1, Relaxed) >= max {
            waiting.fetch_sub(1, Relaxed);
            return Err(HostCallError::Overloaded("too many requests waiting for a slot at this gateway"));
        }
        Ok(Self(waiting))
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use protocol::shm::naming::segment_name;
    use protocol::{ImageShape, ModelKind, Output, Prediction, Refusal, SegmentInfo, SlotRef, StartupTimings};

    use super::*;
    use crate::SlotLease;

    /// A link to no host: two slots, a 2x2 gray classifier; what it sends
    /// arrives on the receiver.
    fn link(max_waiting: u64) -> (Arc<Link>, mpsc::UnboundedReceiver<GatewayMessage>) {
        static NEXT: AtomicU64 = AtomicU64::new(7_000_000);
        let os_id = segment_name(std::process::id(), NEXT.fetch_add(1, Relaxed));
        let layout = SlotLayout::new(2, 4).unwrap();
        let segment = Segment::create(&os_id, layout, 0o600).unwrap();
        let kind = ModelKind::Classifier { input: ImageShape { width: 2, height: 2, channels: 1 }, labels: vec!["a".into()] };
        let model = ModelInfo { name: "m".into(), version: "1".into(), description: String::new(), kind, max_batch_size: 2, device: "cpu".into(), host_decode: None };
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            host_pid: 1,
            model,
            segment: SegmentInfo { os_id, slot_count: 2, slot_size: layout.slot_size() },
            phase: Phase::Ready(StartupTimings::default()),
        };
        Link::new(welcome, segment, max_waiting)
    }

    async fn sent(outbox: &mut mpsc::UnboundedReceiver<GatewayMessage>) -> GatewayMessage {
        tokio::time::timeout(Duration::from_secs(5), outbox.recv()).await.expect("something sent").expect("outbox open")
    }

    #[tokio::test]
    async fn answers_reach_their_own_request_and_a_lease_keeps_its_permit() {
        let (link, mut outbox) = link(4);
        let lease = tokio::spawn({
            let link = link.clone();
            async move { SlotLease::acquire(&link).await }
        });
        let GatewayMessage::Lease { request_id } = sent(&mut outbox).await else { panic!("expected a Lease") };
        // Another request's answer is not this one's; nobody waits for it.
        link.route(HostMessage::LeaseRefused { request_id: request_id + 100, reason: Refusal::QueueFull });
        link.route(HostMessage::Leased { request_id, slot: SlotRef { index: 1, generation: 1 } });
        let lease = lease.await.unwrap().expect("leased");
        assert_eq!(link.slots.available_permits(), 1, "the lease holds one of the two slots");
        drop(lease);
        assert!(matches!(sent(&mut outbox).await, GatewayMessage::Release { .. }), "an unsent lease is given back");
        assert_eq!(link.slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_lease_answered_after_its_caller_left_is_released_and_its_permit_freed_then() {
        let (link, mut outbox) = link(4);
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { SlotLease::acquire(&link).await }
        });
        let GatewayMessage::Lease { request_id } = sent(&mut outbox).await else { panic!("expected a Lease") };
        waiting.abort();
        let _ = waiting.await;
        // The host still counts the slot as leased: so does the gateway.
        assert_eq!(link.slots.available_permits(), 1);
        link.route(HostMessage::Leased { request_id, slot: SlotRef { index: 0, generation: 3 } });
        assert_eq!(sent(&mut outbox).await, GatewayMessage::Release { slot: SlotRef { index: 0, generation: 3 } });
        assert_eq!(link.slots.available_permits(), 2);
    }

    /// The lease's grant reached its waiter, which was dropped before it
    /// read it: a request that failed beside its lease (a bad body read
    /// while the lease was asked) does exactly this.
    #[tokio::test]
    async fn a_lease_granted_but_never_read_is_released() {
        let (link, mut outbox) = link(4);
        let mut acquiring = Box::pin(SlotLease::acquire(&link));
        assert!(futures::poll!(acquiring.as_mut()).is_pending());
        let GatewayMessage::Lease { request_id } = sent(&mut outbox).await else { panic!("expected a Lease") };
        link.route(HostMessage::Leased { request_id, slot: SlotRef { index: 1, generation: 4 } });
        drop(acquiring);
        assert_eq!(sent(&mut outbox).await, GatewayMessage::Release { slot: SlotRef { index: 1, generation: 4 } });
        assert_eq!(link.slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn an_infer_holds_its_permit_until_the_host_answers_even_if_cancelled() {
        let (link, mut outbox) = link(4);
        let permit = link.slot_permit().await.unwrap();
        let lease = SlotLease::new_for_test(link.clone(), SlotRef { index: 0, generation: 1 }, permit);
        let in_flight = lease.infer(Ask::TopK { k: 1 }, protocol::Payload::Input, 1_000_000, "t".into(), None).unwrap();
        let GatewayMessage::Infer(request) = sent(&mut outbox).await else { panic!("expected an Infer") };
        drop(in_flight);
        assert_eq!(sent(&mut outbox).await, GatewayMessage::Cancel { request_id: request.request_id });
        assert_eq!(link.slots.available_permits(), 1, "cancelled, but the host has the slot until it answers");
        let done = Prediction { output: Output::TopK(vec![]), timings: Default::default() };
        link.route(HostMessage::InferDone { request_id: request.request_id, result: Ok(done) });
        assert_eq!(link.slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn past_max_waiting_a_request_is_refused_at_once_and_close_fails_the_waiters() {
        let (link, _outbox) = link(1);
        let held = (link.slot_permit().await.unwrap(), link.slot_permit().await.unwrap());
        let waiter = tokio::spawn({
            let link = link.clone();
            async move { link.slot_permit().await.map(drop) }
        });
        while link.waiting_for_slots() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(link.slot_permit().await, Err(HostCallError::Overloaded(_))), "a second waiter is one too many");
        link.close();
        assert!(matches!(waiter.await.unwrap(), Err(HostCallError::Unavailable { .. })), "closing fails the waiter at once");
        drop(held);
    }
}
