//! A request's way to a host: the host routing chose, and a second chance
//! on another replica if that host stops being ready before it takes the
//! request.
//!
//! Between the choice and the lease, the chosen host may start draining
//! (its PhaseChanged is still on the wire) or die. Nothing of the request
//! has reached its model then, so the lease may be asked, once, of another
//! ready host of the same model, version and signature: what the caller
//! prepared for the first host (pixels at its input size) fits the second,
//! and the answer's version is the one the caller reports.

use std::ops::Deref;
use std::sync::Arc;

use super::{Fleet, HostCallError, Link, SlotLease};

pub struct Route {
    link: Arc<Link>,
    fleet: Fleet,
}

impl Route {
    /// Counts the request as outstanding at `link` until it is dropped.
    pub(super) fn new(link: Arc<Link>, fleet: Fleet) -> Self {
        link.count_routed(true);
        Self { link, fleet }
    }

    /// A slot on the chosen host, or on a replica of it if the chosen one
    /// turned out not ready (see the module's doc).
    pub async fn lease(&self) -> Result<SlotLease, HostCallError> {
        match SlotLease::acquire(&self.link).await {
            Err(unavailable @ HostCallError::Unavailable { .. }) => match self.fleet.replica_of(&self.link) {
                Some(replica) => SlotLease::acquire(&replica).await,
                None => Err(unavailable),
            },
            result => result,
        }
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.link.count_routed(false);
    }
}

/// The chosen host's model, phase and status.
impl Deref for Route {
    type Target = Link;

    fn deref(&self) -> &Link {
        &self.link
    }
}
