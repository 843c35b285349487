//! Job calls to a host of an iterative model, and finding the host that
//! holds a job from its id (which starts with that host's tag).

use std::sync::Arc;

use protocol::jobs::{JobError, JobOutput, JobSubmit, JobView, job_host_tag};
use protocol::{GatewayMessage, HostMessage};

use super::link::RequestGuard;
use super::{Fleet, HostCallError, Link};

/// Why a job call failed: the host's refusal, or no host to ask.
#[derive(Debug)]
pub enum JobCallError {
    Host(HostCallError),
    Job(JobError),
}

impl From<HostCallError> for JobCallError {
    fn from(e: HostCallError) -> Self {
        JobCallError::Host(e)
    }
}

impl Link {
    pub async fn submit_job(&self, params: Vec<i64>, steps: Option<u32>, idempotency_key: Option<String>) -> Result<JobView, JobCallError> {
        let request_id = self.next_request_id();
        self.job_call(request_id, GatewayMessage::JobSubmit(JobSubmit { request_id, params, steps, idempotency_key })).await
    }

    pub async fn job_status(&self, id: &str) -> Result<JobView, JobCallError> {
        let request_id = self.next_request_id();
        self.job_call(request_id, GatewayMessage::JobStatus { request_id, id: id.into() }).await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<JobView, JobCallError> {
        let request_id = self.next_request_id();
        self.job_call(request_id, GatewayMessage::JobCancel { request_id, id: id.into() }).await
    }

    pub async fn job_result(&self, id: &str) -> Result<JobOutput, JobCallError> {
        let request_id = self.next_request_id();
        let answer = self.request(request_id, GatewayMessage::JobResult { request_id, id: id.into() }, None)?;
        match RequestGuard::new(self, request_id, answer).wait().await?.message {
            HostMessage::JobResult { result, .. } => result.map_err(JobCallError::Job),
            other => Err(HostCallError::Rejected(format!("unexpected answer to JobResult: {other:?}")).into()),
        }
    }

    async fn job_call(&self, request_id: u64, message: GatewayMessage) -> Result<JobView, JobCallError> {
        let answer = self.request(request_id, message, None)?;
        match RequestGuard::new(self, request_id, answer).wait().await?.message {
            HostMessage::Job { result, .. } => result.map_err(JobCallError::Job),
            other => Err(HostCallError::Rejected(format!("unexpected answer to a job call: {other:?}")).into()),
        }
    }
}

impl Fleet {
    /// The connected host whose tag starts `id`. A malformed id, or one no
    /// host here issued, is not found; while some host is away it may be
    /// that one's, so that is unavailable (retry) instead.
    pub fn job_host(&self, id: &str) -> Result<Arc<Link>, JobCallError> {
        let not_found = || JobCallError::Job(JobError::NotFound(id.into()));
        let tag = job_host_tag(id).ok_or_else(not_found)?;
        let members = self.members();
        let linked = members.iter().filter_map(|m| m.live_link());
        if let Some(link) = linked.clone().find(|l| l.model().iterative().is_some_and(|i| i.host_tag == tag)) {
            return Ok(link.clone());
        }
        match members.iter().find(|m| !m.retired && m.live_link().is_none()) {
            Some(away) => Err(HostCallError::Unavailable { phase: format!("a host is {}; the job may be its", away.down_reason) }.into()),
            None => Err(not_found()),
        }
    }
}
