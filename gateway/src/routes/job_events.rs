//! `GET /v1/jobs/{id}/events`: a job's progress as server-sent events.
//!
//! The gateway asks the job's host for the job every [`POLL`] and sends an
//! event whenever its state or step changed: the host keeps no list of
//! watchers, and a stream survives the host's link being re-established
//! (or the host restarting: the job then reads `failed`, or its result).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use protocol::jobs::{JobError, JobState, JobView};

use super::jobs::JobBody;
use crate::AppState;
use crate::error::ApiError;
use crate::host_client::{HostCallError, JobCallError};

/// How often the host is asked: a step of the example model takes a
/// fraction of this, so events come at about this rate while a job runs.
const POLL: Duration = Duration::from_millis(100);

/// A stream in progress.
struct Watch {
    app: AppState,
    id: String,
    /// The answer fetched before the stream started (sent first).
    first: Option<JobView>,
    /// The last state and step sent, so that only changes are.
    last: Option<(JobState, u32)>,
    /// Set after the final event.
    over: bool,
}

/// The job at once, then again at every change of its state or step, each
/// as an event `job` whose data is the job as `GET /v1/jobs/{id}` answers
/// it; the stream ends after the job's final state (`succeeded`,
/// `failed` or `canceled`). An `error` event ends it if the job
/// disappears (expired).
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", operation_id = "v1_job_events", tag = "jobs",
    params(("id" = String, Path, description = "The id the submit answered.")),
    responses(
        (status = 200, description = "Server-sent events, each `event: job` with the job as JSON.", content_type = "text/event-stream", body = String),
        super::jobs::JobErrors,
    ),
)]
pub async fn events(State(app): State<AppState>, Path(id): Path<String>) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // The first answer before the stream: an unknown id is a 404, not an event.
    let first = app.fleet.job_host(&id)?.job_status(&id).await?;
    let watch = Watch { app, id, first: Some(first), last: None, over: false };
    Ok(Sse::new(futures::stream::unfold(watch, next_event)).keep_alive(KeepAlive::default()))
}

async fn next_event(mut w: Watch) -> Option<(Result<Event, Infallible>, Watch)> {
    if w.over {
        return None;
    }
    loop {
        let job = match w.first.take() {
            Some(job) => Ok(job),
            None => {
                tokio::time::sleep(POLL).await;
                match w.app.fleet.job_host(&w.id) {
                    Ok(link) => link.job_status(&w.id).await,
                    Err(e) => Err(e),
                }
            }
        };
        match job {
            Ok(job) => {
                if w.last == Some((job.state, job.step)) {
                    continue;
                }
                w.last = Some((job.state, job.step));
                w.over = job.state.is_done();
                let event = Event::default().event("job").json_data(JobBody::from(job)).unwrap_or_else(|e| error_event(&e.to_string()));
                return Some((Ok(event), w));
            }
            // The host is away for now: keep the stream and ask again.
            Err(JobCallError::Host(HostCallError::Unavailable { .. })) => continue,
            Err(JobCallError::Job(JobError::NotFound(_))) => {
                w.over = true;
                return Some((Ok(error_event(&format!("job {} is no longer known (expired)", w.id))), w));
            }
            Err(other) => {
                w.over = true;
                tracing::warn!(job = %w.id, error = ?other, "job events ended");
                return Some((Ok(error_event("the job's host could not be asked")), w));
            }
        }
    }
}

fn error_event(message: &str) -> Event {
    Event::default().event("error").data(message)
}
