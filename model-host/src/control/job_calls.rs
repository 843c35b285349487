//! What a connection does with the job messages of an iterative model
//! (submit, status, cancel, result): one call on the host's job table,
//! answered at once.

use protocol::jobs::JobError;
use protocol::{GatewayMessage, HostMessage};

use super::context::HostContext;

/// The answer to a job message (any other message is not one: None).
pub fn answer(ctx: &HostContext, message: GatewayMessage) -> Option<HostMessage> {
    let table = ctx.job_table.as_deref();
    let no_jobs = || Err(JobError::NotIterative);
    Some(match message {
        GatewayMessage::JobSubmit(submit) => {
            let request_id = submit.request_id;
            let result = match table {
                // Parameters may be checked before READY, but no job is
                // queued on a model that may yet fail to load.
                Some(_) if !ctx.phase.borrow().is_ready() => Err(JobError::NotReady),
                Some(table) => table.submit(submit),
                None => no_jobs(),
            };
            HostMessage::Job { request_id, result }
        }
        GatewayMessage::JobStatus { request_id, id } => {
            HostMessage::Job { request_id, result: table.map_or_else(no_jobs, |t| t.view(&id)) }
        }
        GatewayMessage::JobCancel { request_id, id } => {
            HostMessage::Job { request_id, result: table.map_or_else(no_jobs, |t| t.cancel(&id)) }
        }
        GatewayMessage::JobResult { request_id, id } => {
            HostMessage::JobResult { request_id, result: table.map_or_else(|| Err(JobError::NotIterative), |t| t.output(&id)) }
        }
        _ => return None,
    })
}
