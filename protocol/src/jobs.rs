//! Jobs: requests that run for many steps on an iterative model (a
//! diffusion model's denoising loop), submitted, watched and collected
//! by id instead of held open as one request.
//!
//! The host owns every job: it runs the loop, keeps the table and writes
//! the results under its state directory, so a gateway may die or another
//! one may answer. A job's id starts with its host's [`IterativeModel::host_tag`],
//! which is how any gateway finds the host that holds it. Results cross
//! the socket in the answer frame (they are small: the model's output is
//! bounded by [`MAX_JOB_OUTPUT`] when the host loads it).

use serde::{Deserialize, Serialize};

use crate::message::ImageShape;

/// The largest output one job may produce: it travels in one frame, under
/// [`crate::MAX_FRAME_LEN`] with room for the frame's other fields.
pub const MAX_JOB_OUTPUT: u64 = 60 * 1024;

/// Longest idempotency key a gateway may send.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// An iterative model as both sides see it (model.toml's `[iterative]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IterativeModel {
    /// The most steps a job may run, and the default.
    pub steps: u32,
    /// The job's integer parameters, in the order the model's `start` takes them.
    pub params: Vec<ParamSpec>,
    /// What `finish` produces for one job: a uint8 image.
    pub output: ImageShape,
    /// Jobs queued (not yet running) before a submit is refused.
    pub max_queued: u32,
    /// Names the host in its job ids (kept in its state directory, so it
    /// survives restarts); see [`job_host_tag`].
    pub host_tag: String,
}

/// One integer parameter of a job and its inclusive range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub min: i64,
    pub max: i64,
}

/// Gateway -> host: a new job. The gateway validated the parameters
/// against the model's [`ParamSpec`]s; the host checks again (a gateway is
/// not trusted with the host's memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubmit {
    pub request_id: u64,
    /// One value per [`IterativeModel::params`], in order.
    pub params: Vec<i64>,
    /// At most [`IterativeModel::steps`]; None: the model's.
    pub steps: Option<u32>,
    /// A retried submit with the same key gets the same job.
    pub idempotency_key: Option<String>,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn is_done(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled)
    }

    pub const ALL: [JobState; 5] = [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Canceled];
}

/// A job as its host sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub model: String,
    pub state: JobState,
    /// Steps done, of `steps`.
    pub step: u32,
    pub steps: u32,
    /// Unix times in milliseconds (the host's clock).
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Why a failed job failed.
    pub error: Option<String>,
}

/// A finished job's output: one image, height x width x channels uint8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutput {
    pub shape: ImageShape,
    pub pixels: Vec<u8>,
}

/// Why the host did not do what a job message asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobError {
    /// No job with this id here (never, or expired and removed).
    NotFound(String),
    /// The model already has `limit` jobs queued.
    QueueFull { limit: u32 },
    /// A parameter, the step count or the key is out of its bounds:
    /// `field` at fault, and the problem naming the limit.
    Invalid { field: String, problem: String, too_large: bool },
    /// The result was asked of a job that has none (yet): its state.
    NoResult(JobState),
    /// This host's model is not iterative.
    NotIterative,
    NotReady,
    /// The host failed to read or write its store; for its log.
    Internal(String),
}

/// An iterative host's jobs and steps, for `Status` and the gateway's metrics.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobCounts {
    /// Jobs in the host's table now, by state (finished ones until they expire).
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
    /// Steps run, over all jobs, since the host started.
    pub steps_total: u64,
    /// Calls of the model's `step`: steps_total / step_batches_total is
    /// the mean number of jobs whose steps ran together.
    pub step_batches_total: u64,
    /// (batch size, step calls at it), for the step batch size histogram.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<[u64; 2]>))]
    pub step_batches_by_size: Vec<(u32, u64)>,
    /// Time spent in `start`, `step` and `finish`.
    pub step_seconds_total: f64,
}

/// The host tag a job id starts with (`<tag>-<number>`), if it has one.
pub fn job_host_tag(id: &str) -> Option<&str> {
    let (tag, n) = id.split_once('-')?;
    let hex = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(tag, 16) && hex(n, 16)).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_differ_in_their_tag_only() {
        use crate::message::ModelKind;
        let model = |tag: &str, steps| IterativeModel {
            steps,
            params: vec![ParamSpec { name: "class".into(), min: 0, max: 9 }],
            output: ImageShape { width: 2, height: 2, channels: 1 },
            max_queued: 4,
            host_tag: tag.into(),
        };
        let (a, b) = (ModelKind::Iterative(model("aa", 10)), ModelKind::Iterative(model("bb", 10)));
        assert!(a.same_signature(&b) && a != b);
        assert!(!a.same_signature(&ModelKind::Iterative(model("aa", 20))));
    }

    #[test]
    fn ids_name_their_host() {
        assert_eq!(job_host_tag("a1b2c3d4-0000018c2f"), Some("a1b2c3d4"));
        assert_eq!(job_host_tag("a1b2c3d4"), None);
        assert_eq!(job_host_tag("zz-01"), None);
        assert_eq!(job_host_tag("a1-"), None);
        assert_eq!(job_host_tag("a1-01/../x"), None);
        assert_eq!(job_host_tag(&format!("{}-1", "a".repeat(17))), None);
    }
}
