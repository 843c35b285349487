//! A leased slot and the request that uses it.
//!
//! [`SlotLease`] is RAII: write the pixels, then [`SlotLease::infer`]
//! consumes it; dropped unsent, it gives the slot back. [`InFlight`]
//! covers the wait for the answer: dropped early (the HTTP client went
//! away, the deadline passed), it tells the host to skip the request.

use std::sync::Arc;

use protocol::{Ask, GatewayMessage, HostMessage, InferError, InferRequest, Payload, Prediction, Refusal, SlotRef, TraceParent};
use tokio::sync::OwnedSemaphorePermit;

use super::HostCallError;
use super::link::{Answer, Link, RequestGuard};

pub struct SlotLease {
    link: Arc<Link>,
    slot: SlotRef,
    /// False once sent in an Infer: the host frees it after answering.
    owned: bool,
    /// The slot's permit at this gateway: it moves with the Infer into the
    /// link's table of waiting requests, or goes when the lease is dropped
    /// (after the Release is queued).
    permit: Option<OwnedSemaphorePermit>,
}

impl SlotLease {
    /// A lease as if the host had granted `slot`, for the link's tests.
    #[cfg(test)]
    pub(super) fn new_for_test(link: Arc<Link>, slot: SlotRef, permit: OwnedSemaphorePermit) -> Self {
        SlotLease { link, slot, owned: true, permit: Some(permit) }
    }

    /// Asks the host for a slot to write one request's pixels into, first
    /// waiting for one of this gateway's slots to be free (see [`Link`]'s
    /// module doc).
    pub async fn acquire(link: &Arc<Link>) -> Result<SlotLease, HostCallError> {
        let permit = link.slot_permit().await?;
        let request_id = link.next_request_id();
        let answer = link.request(request_id, GatewayMessage::Lease { request_id }, Some(permit))?;
        let Answer { message, permit, .. } = RequestGuard::new(link, request_id, answer).wait().await?;
        match message {
            HostMessage::Leased { slot, .. } => Ok(SlotLease { link: link.clone(), slot, owned: true, permit }),
            HostMessage::LeaseRefused { reason, .. } => Err(match reason {
                Refusal::NotReady => HostCallError::Unavailable { phase: link.phase().name().to_string() },
                Refusal::NoFreeSlot => HostCallError::Overloaded("all of this gateway's slots are in use"),
                Refusal::QueueFull => HostCallError::Overloaded("inference queue full"),
            }),
            other => Err(HostCallError::Rejected(format!("unexpected answer to Lease: {other:?}"))),
        }
    }

    /// Copies one image's pixels into the slot.
    pub fn write(&mut self, pixels: &[u8]) -> Result<(), HostCallError> {
        self.link
            .segment()
            .write_slot(self.slot.index, pixels)
            .map_err(|e| HostCallError::Rejected(format!("writing slot: {e}")))
    }

    /// Sends the request; the slot now belongs to the host until it answers.
    /// `trace` is the span that waits for the answer, for the host's spans.
    pub fn infer(mut self, ask: Ask, payload: Payload, budget_us: u64, tag: String, trace: Option<TraceParent>) -> Result<InFlight, HostCallError> {
        let request_id = self.link.next_request_id();
        let request = InferRequest { request_id, slot: self.slot, ask, budget_us, tag, payload, trace };
        let answer = self.link.request(request_id, GatewayMessage::Infer(request), self.permit.take())?;
        self.owned = false;
        Ok(InFlight { link: self.link.clone(), request_id, answer: Some(answer) })
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if self.owned {
            self.link.send(GatewayMessage::Release { slot: self.slot });
        }
    }
}

pub struct InFlight {
    link: Arc<Link>,
    request_id: u64,
    answer: Option<tokio::sync::oneshot::Receiver<Answer>>,
}

impl InFlight {
    /// The answer and the outputs the host left in the slot (a tensor
    /// model's, laid out as its signature's output placements).
    pub async fn result_with_outputs(mut self) -> Result<(Prediction, Vec<u8>), HostCallError> {
        let answer = self.answer.as_mut().expect("the receiver is only taken here, once");
        let received = answer.await;
        // Answered (or disconnected): nothing left to cancel on drop.
        self.answer = None;
        let Answer { message, outputs, .. } = received.map_err(|_| HostCallError::Unavailable { phase: "disconnected".into() })?;
        match message {
            HostMessage::InferDone { result: Ok(prediction), .. } => Ok((prediction, outputs)),
            HostMessage::InferDone { result: Err(e), .. } => Err(match e {
                InferError::DeadlineExceeded => HostCallError::DeadlineExceeded,
                InferError::QueueFull => HostCallError::Overloaded("inference queue full"),
                InferError::NotReady => HostCallError::Unavailable { phase: self.link.phase().name().to_string() },
                InferError::Cancelled => HostCallError::Rejected("cancelled".into()),
                InferError::InvalidRequest(m) => HostCallError::Rejected(m),
                InferError::BadImage(m) => HostCallError::BadImage(m),
                InferError::Model(m) => HostCallError::Model(m),
            }),
            other => Err(HostCallError::Rejected(format!("unexpected answer to Infer: {other:?}"))),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Still holding the receiver: nobody read the answer.
        if self.answer.is_some() {
            self.link.forget(self.request_id);
            self.link.send(GatewayMessage::Cancel { request_id: self.request_id });
        }
    }
}
