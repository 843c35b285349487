//! One live connection to the host.
//!
//! A writer task owns the socket's send half and drains an unbounded
//! outbox; the reader (a future the caller drives) routes each answer to
//! the request waiting for it by request id. When the connection ends,
//! every waiting request fails at once: none hangs, none gets another's
//! answer.
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
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use protocol::shm::{Segment, SlotLayout};
use protocol::{
    GatewayCodec, GatewayMessage, HostMessage, HostStatus, ModelInfo, PROTOCOL_VERSION, Phase, Refusal, Welcome,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;

use super::HostCallError;
use super::lease::SlotLease;

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
    phase: watch::Sender<Phase>,
    next_request_id: AtomicU64,
}

/// One request waiting for its answer.
struct Waiter {
    answer: oneshot::Sender<Answer>,
    /// The slot to copy a tensor model's outputs out of, for an Infer.
    read_back: Option<u32>,
}

/// A host message, with the outputs it left in the slot (tensor models).
pub struct Answer {
    pub message: HostMessage,
    pub outputs: Vec<u8>,
}

/// The reader: resolves with the reason the connection ended.
pub type Reader = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

impl Link {
    /// Connects and runs the handshake: Hello, Welcome, map, SegmentMapped.
    pub async fn connect(socket: &Path, gateway_name: &str) -> Result<(Arc<Link>, Reader), String> {
        let name = socket.to_fs_name::<GenericFilePath>().map_err(|e| e.to_string())?;
        let stream = Stream::connect(name).await.map_err(|e| format!("connect: {e}"))?;
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
        let layout = SlotLayout::new(welcome.segment.slot_count, welcome.segment.slot_size).map_err(|e| e.to_string())?;
        if layout.slot_size() < welcome.model.input_len() {
            return Err("host's slots are smaller than the model input".into());
        }
        let segment = Segment::open(&welcome.segment.os_id, layout).map_err(|e| e.to_string())?;
        channel.send(GatewayMessage::SegmentMapped).await.map_err(|e| e.to_string())?;

        let (mut sink, mut stream) = channel.split();
        let (outbox, mut outbox_rx) = mpsc::unbounded_channel::<GatewayMessage>();
        let (phase, _) = watch::channel(welcome.phase.clone());
        let link = Arc::new(Link {
            outbox,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            segment,
            welcome,
            phase,
            next_request_id: AtomicU64::new(1),
        });
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
            | HostMessage::Status { request_id, .. } => *request_id,
            other => {
                tracing::warn!(message = ?other, "unexpected message from the host");
                return;
            }
        };
        // None: the caller gave up (deadline, client gone) and was removed.
        let waiter = self.pending.lock().expect("pending lock poisoned").remove(&id);
        match (waiter, message) {
            (Some(waiter), message) => {
                let outputs = match (&message, waiter.read_back) {
                    (HostMessage::InferDone { result: Ok(_), .. }, Some(index)) => self.read_outputs(index),
                    _ => Ok(Vec::new()),
                };
                let answer = match outputs {
                    Ok(outputs) => Answer { message, outputs },
                    Err(e) => {
                        let message = HostMessage::InferDone { request_id: id, result: Err(protocol::InferError::Model(e)) };
                        Answer { message, outputs: Vec::new() }
                    }
                };
                let _ = waiter.answer.send(answer);
            }
            // A lease nobody waits for any more: give the slot straight back.
            (None, HostMessage::Leased { slot, .. }) => self.send(GatewayMessage::Release { slot }),
            (None, _) => {}
        }
    }

    /// Copies a tensor model's outputs out of slot `index`.
    fn read_outputs(&self, index: u32) -> Result<Vec<u8>, String> {
        let len = self.model().tensors.as_ref().map_or(0, |t| t.output_bytes());
        let mut outputs = vec![0; len as usize];
        self.segment.read_slot(index, &mut outputs).map_err(|e| format!("reading the outputs from slot {index}: {e}"))?;
        Ok(outputs)
    }

    /// Marks the link dead and fails every waiting request.
    pub fn close(&self) {
        let mut pending = self.pending.lock().expect("pending lock poisoned");
        self.closed.store(true, Relaxed);
        pending.clear();
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

    /// Registers a waiter for `request_id`, then sends `message`.
    pub(super) fn request(
        &self,
        request_id: u64,
        message: GatewayMessage,
    ) -> Result<oneshot::Receiver<Answer>, HostCallError> {
        let (tx, rx) = oneshot::channel();
        let read_back = match &message {
            GatewayMessage::Infer(r) if self.model().tensors.is_some() => Some(r.slot.index),
            _ => None,
        };
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            if self.is_closed() {
                return Err(HostCallError::Unavailable { phase: "disconnected".into() });
            }
            pending.insert(request_id, Waiter { answer: tx, read_back });
        }
        if self.outbox.send(message).is_err() {
            self.forget(request_id);
            return Err(HostCallError::Unavailable { phase: "disconnected".into() });
        }
        Ok(rx)
    }

    /// Drops the waiter for a request its caller gave up on.
    pub(super) fn forget(&self, request_id: u64) {
        self.pending.lock().expect("pending lock poisoned").remove(&request_id);
    }

    /// Asks the host for a slot to write one request's pixels into.
    pub async fn lease(self: &Arc<Self>) -> Result<SlotLease, HostCallError> {
        let request_id = self.next_request_id();
        let answer = self.request(request_id, GatewayMessage::Lease { request_id })?;
        let message = RequestGuard { link: self, request_id }.wait(answer).await?;
        match message {
            HostMessage::Leased { slot, .. } => Ok(SlotLease::new(self.clone(), slot)),
            HostMessage::LeaseRefused { reason, .. } => Err(match reason {
                Refusal::NotReady => HostCallError::Unavailable { phase: self.phase().name().to_string() },
                Refusal::NoFreeSlot => HostCallError::Overloaded("all of this gateway's slots are in use"),
                Refusal::QueueFull => HostCallError::Overloaded("inference queue full"),
            }),
            other => Err(HostCallError::Rejected(format!("unexpected answer to Lease: {other:?}"))),
        }
    }

    pub async fn status(self: &Arc<Self>) -> Result<HostStatus, HostCallError> {
        let request_id = self.next_request_id();
        let answer = self.request(request_id, GatewayMessage::Status { request_id })?;
        match (RequestGuard { link: self, request_id }).wait(answer).await? {
            HostMessage::Status { status, .. } => Ok(status),
            other => Err(HostCallError::Rejected(format!("unexpected answer to Status: {other:?}"))),
        }
    }
}

/// Removes the waiter if the caller stops waiting (deadline, client gone).
pub(super) struct RequestGuard<'a> {
    pub link: &'a Link,
    pub request_id: u64,
}

impl RequestGuard<'_> {
    pub async fn wait(self, answer: oneshot::Receiver<Answer>) -> Result<HostMessage, HostCallError> {
        let result = answer.await.map(|a| a.message).map_err(|_| HostCallError::Unavailable { phase: "disconnected".into() });
        std::mem::forget(self);
        result
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.link.forget(self.request_id);
    }
}
