//! The host's jobs: every job from its submit until its record expires,
//! the queue of those not yet running, and the bounds on both.
//!
//! Connection tasks call it (submit, status, cancel, result) and so does
//! the runner (take queued jobs, report progress, finish), each call one
//! short critical section. Every change of state is written to the
//! [`Store`] before the call returns, so what a gateway was told survives
//! the host. Progress is not written (it changes every step): a host that
//! dies mid-job reports it failed, from the record's last state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use protocol::jobs::{JobCounts, JobError, JobOutput, JobState, JobSubmit, JobView, MAX_IDEMPOTENCY_KEY};

use super::store::{Record, Store};
use crate::model::config::iterative::IterativeConfig;

/// The bounds an operator sets (`--job-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Jobs queued and not yet running before a submit is refused.
    pub max_queued: u32,
    /// How long a finished job's record and result are kept.
    pub retention: Duration,
    /// The most finished jobs kept; past it the oldest go first.
    pub max_results: usize,
    /// The most bytes of results kept; past it the oldest go first.
    pub max_result_bytes: u64,
}

/// A queued job handed to the runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub id: String,
    pub params: Vec<i64>,
    pub steps: u32,
}

/// Step counters, for `Status` and the gateway's metrics.
#[derive(Debug, Default)]
struct Steps {
    total: AtomicU64,
    batches: AtomicU64,
    micros: AtomicU64,
    /// Step calls by batch size, indexed by size (1..=max_batch_size).
    by_size: Vec<AtomicU64>,
}

struct Jobs {
    records: HashMap<String, Record>,
    queue: VecDeque<String>,
    /// Idempotency key -> job id, while the job is kept.
    by_key: HashMap<String, String>,
    /// Ids asked to cancel while running; the runner drops them at its next step.
    canceling: std::collections::HashSet<String>,
    next_number: u64,
}

pub struct JobTable {
    jobs: Mutex<Jobs>,
    /// Signalled when a job is queued: the runner sleeps on it when idle.
    queued: Condvar,
    store: Store,
    model: String,
    config: IterativeConfig,
    tag: String,
    limits: Limits,
    steps: Steps,
}

/// Milliseconds since the Unix epoch, the timestamps jobs carry.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl JobTable {
    /// The table as the store left it: jobs that were queued or running
    /// when the last host stopped are failed, saying so.
    pub fn open(store: Store, model: &str, config: IterativeConfig, limits: Limits, max_batch: usize) -> std::io::Result<Self> {
        let tag = store.host_tag()?;
        let now = now_ms();
        let mut jobs = Jobs {
            records: HashMap::new(),
            queue: VecDeque::new(),
            by_key: HashMap::new(),
            canceling: Default::default(),
            // Clock-seeded, so ids are not reused across restarts even
            // after every record that held them expired.
            next_number: now.saturating_mul(1000),
        };
        for mut record in store.load_all()? {
            if !record.view.state.is_done() {
                let was = record.view.state.name();
                record.view.state = JobState::Failed;
                record.view.error = Some(format!("the model host stopped (killed or restarted) while the job was {was}"));
                record.view.finished_ms = Some(now);
                store.save(&record)?;
            }
            if let Some(key) = &record.idempotency_key {
                jobs.by_key.insert(key.clone(), record.view.id.clone());
            }
            let number = record.view.id.rsplit('-').next().and_then(|n| u64::from_str_radix(n, 16).ok()).unwrap_or(0);
            jobs.next_number = jobs.next_number.max(number + 1);
            jobs.records.insert(record.view.id.clone(), record);
        }
        let steps = Steps { by_size: (0..=max_batch).map(|_| AtomicU64::new(0)).collect(), ..Steps::default() };
        let table = Self { jobs: Mutex::new(jobs), queued: Condvar::new(), store, model: model.into(), config, tag, limits, steps };
        table.sweep(now);
        Ok(table)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().expect("job table lock poisoned")
    }

    pub fn submit(&self, submit: JobSubmit) -> Result<JobView, JobError> {
        let steps = self.check(&submit)?;
        let mut jobs = self.lock();
        if let Some(id) = submit.idempotency_key.as_ref().and_then(|k| jobs.by_key.get(k))
            && let Some(record) = jobs.records.get(id)
        {
            return Ok(record.view.clone());
        }
        let queued = jobs.queue.len();
        if queued >= self.limits.max_queued as usize {
            return Err(JobError::QueueFull { limit: self.limits.max_queued });
        }
        let id = format!("{}-{:x}", self.tag, jobs.next_number);
        jobs.next_number += 1;
        let view = JobView {
            id: id.clone(),
            model: self.model.clone(),
            state: JobState::Queued,
            step: 0,
            steps,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            error: None,
        };
        let record = Record { view: view.clone(), params: submit.params, idempotency_key: submit.idempotency_key, output: None };
        self.store.save(&record).map_err(|e| JobError::Internal(format!("saving job {id}: {e}")))?;
        if let Some(key) = &record.idempotency_key {
            jobs.by_key.insert(key.clone(), id.clone());
        }
        jobs.records.insert(id.clone(), record);
        jobs.queue.push_back(id);
        self.queued.notify_one();
        Ok(view)
    }

    /// The submit's step count, once its parameters are within the model's bounds.
    fn check(&self, s: &JobSubmit) -> Result<u32, JobError> {
        let invalid = |field: &str, problem: String, too_large| Err(JobError::Invalid { field: field.into(), problem, too_large });
        if s.params.len() != self.config.params.len() {
            let names: Vec<&str> = self.config.params.iter().map(|p| p.name.as_str()).collect();
            return invalid("params", format!("{} values for the model's {} parameters ({})", s.params.len(), names.len(), names.join(", ")), false);
        }
        for (value, spec) in s.params.iter().zip(&self.config.params) {
            if !(spec.min..=spec.max).contains(value) {
                return invalid(&spec.name, format!("{value} is outside {}..={}", spec.min, spec.max), false);
            }
        }
        let steps = s.steps.unwrap_or(self.config.steps);
        if steps == 0 {
            return invalid("steps", "must be at least 1".into(), false);
        }
        if steps > self.config.steps {
            return invalid("steps", format!("{steps} is over the model's limit of {} steps", self.config.steps), true);
        }
        if s.idempotency_key.as_ref().is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY) {
            return invalid("Idempotency-Key", format!("longer than the {MAX_IDEMPOTENCY_KEY}-byte limit"), true);
        }
        Ok(steps)
    }

    pub fn view(&self, id: &str) -> Result<JobView, JobError> {
        self.lock().records.get(id).map(|r| r.view.clone()).ok_or_else(|| JobError::NotFound(id.into()))
    }

    /// A queued job is canceled at once; a running one at the runner's
    /// next step (its view says `running` until then); a finished one
    /// stays as it is.
    pub fn cancel(&self, id: &str) -> Result<JobView, JobError> {
        let mut jobs = self.lock();
        let jobs = &mut *jobs;
        let record = jobs.records.get_mut(id).ok_or_else(|| JobError::NotFound(id.into()))?;
        match record.view.state {
            JobState::Queued => {
                jobs.queue.retain(|q| q != id);
                record.view.state = JobState::Canceled;
                record.view.finished_ms = Some(now_ms());
                self.store.save(record).map_err(|e| JobError::Internal(format!("saving job {id}: {e}")))?;
            }
            JobState::Running => {
                jobs.canceling.insert(id.into());
            }
            JobState::Succeeded | JobState::Failed | JobState::Canceled => {}
        }
        Ok(record.view.clone())
    }

    pub fn output(&self, id: &str) -> Result<JobOutput, JobError> {
        let shape = {
            let jobs = self.lock();
            let record = jobs.records.get(id).ok_or_else(|| JobError::NotFound(id.into()))?;
            match (record.view.state, record.output) {
                (JobState::Succeeded, Some(shape)) => shape,
                (state, _) => return Err(JobError::NoResult(state)),
            }
        };
        self.store.load_output(id, shape).map_err(|e| JobError::Internal(format!("reading job {id}'s result: {e}")))
    }

    /// Up to `max` queued jobs, now running; waits up to `idle` for one
    /// when there is none and `wait` is set.
    pub fn take(&self, max: usize, wait: bool, idle: Duration) -> Vec<Admitted> {
        let mut jobs = self.lock();
        if wait && jobs.queue.is_empty() {
            jobs = self.queued.wait_timeout(jobs, idle).expect("job table lock poisoned").0;
        }
        let mut taken = Vec::new();
        let now = now_ms();
        while taken.len() < max {
            let Some(id) = jobs.queue.pop_front() else { break };
            let Some(record) = jobs.records.get_mut(&id) else { continue };
            record.view.state = JobState::Running;
            record.view.started_ms = Some(now);
            if let Err(e) = self.store.save(record) {
                tracing::warn!(job = %id, error = %e, "saving a running job's record");
            }
            taken.push(Admitted { id, params: record.params.clone(), steps: record.view.steps });
        }
        taken
    }

    /// Jobs queued or running.
    pub fn unfinished(&self) -> usize {
        self.lock().records.values().filter(|r| !r.view.state.is_done()).count()
    }

    /// Fails every queued or running job with `reason` (the host is
    /// exiting); how many. The runner may still step them until the
    /// process ends: whatever it reports after this is ignored.
    pub fn fail_unfinished(&self, reason: &str) -> usize {
        let mut jobs = self.lock();
        jobs.queue.clear();
        let now = now_ms();
        let mut failed = 0;
        for record in jobs.records.values_mut().filter(|r| !r.view.state.is_done()) {
            record.view.state = JobState::Failed;
            record.view.error = Some(reason.to_string());
            record.view.finished_ms = Some(now);
            if let Err(e) = self.store.save(record) {
                tracing::warn!(job = %record.view.id, error = %e, "saving a failed job's record");
            }
            failed += 1;
        }
        failed
    }

    /// Records each running job's steps done, and says which of them were
    /// asked to cancel (true: drop it now).
    pub fn progress(&self, rows: &[(&str, u32)]) -> Vec<bool> {
        let mut jobs = self.lock();
        rows.iter()
            .map(|&(id, step)| {
                if let Some(record) = jobs.records.get_mut(id) {
                    record.view.step = step;
                }
                jobs.canceling.contains(id)
            })
            .collect()
    }

    /// Ends a running job: its output, a failure, or (None, None) canceled.
    pub fn end(&self, id: &str, outcome: Result<Option<JobOutput>, String>) {
        let mut jobs = self.lock();
        jobs.canceling.remove(id);
        // Gone (expired), or already failed by fail_unfinished: keep what was said.
        let Some(record) = jobs.records.get_mut(id).filter(|r| r.view.state == JobState::Running) else { return };
        record.view.finished_ms = Some(now_ms());
        match outcome {
            Ok(Some(output)) => match self.store.save_output(id, &output) {
                Ok(()) => {
                    record.view.state = JobState::Succeeded;
                    record.output = Some(output.shape);
                }
                Err(e) => {
                    record.view.state = JobState::Failed;
                    record.view.error = Some("the host could not store the result".into());
                    tracing::error!(job = %id, error = %e, "writing a job's result");
                }
            },
            Ok(None) => record.view.state = JobState::Canceled,
            Err(reason) => {
                record.view.state = JobState::Failed;
                record.view.error = Some(reason);
            }
        }
        if let Err(e) = self.store.save(record) {
            tracing::warn!(job = %id, error = %e, "saving a finished job's record");
        }
        drop(jobs);
        self.sweep(now_ms());
    }

    /// Removes finished jobs past their retention, then the oldest
    /// finished ones while more than the bounds are kept.
    pub fn sweep(&self, now: u64) {
        let mut jobs = self.lock();
        let retention = self.limits.retention.as_millis() as u64;
        let mut done: Vec<(u64, String, u64)> = jobs
            .records
            .values()
            .filter_map(|r| Some((r.view.finished_ms?, r.view.id.clone(), r.output.map_or(0, |s| s.len()))))
            .collect();
        done.sort_unstable();
        let (mut count, mut bytes) = (done.len(), done.iter().map(|d| d.2).sum::<u64>());
        for (finished, id, size) in done {
            let expired = finished.saturating_add(retention) <= now;
            if !expired && count <= self.limits.max_results && bytes <= self.limits.max_result_bytes {
                break;
            }
            if let Some(record) = jobs.records.remove(&id)
                && let Some(key) = record.idempotency_key
            {
                jobs.by_key.remove(&key);
            }
            self.store.remove(&id);
            count -= 1;
            bytes -= size;
        }
    }

    /// Time in `start` or `finish`.
    pub fn record_time(&self, took: Duration) {
        self.steps.micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// One call of `step` over `batch` jobs.
    pub fn record_step(&self, batch: usize, took: Duration) {
        self.steps.total.fetch_add(batch as u64, Relaxed);
        self.steps.batches.fetch_add(1, Relaxed);
        self.steps.micros.fetch_add(took.as_micros() as u64, Relaxed);
        if let Some(c) = self.steps.by_size.get(batch) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn counts(&self) -> JobCounts {
        let mut counts = JobCounts::default();
        for record in self.lock().records.values() {
            *match record.view.state {
                JobState::Queued => &mut counts.queued,
                JobState::Running => &mut counts.running,
                JobState::Succeeded => &mut counts.succeeded,
                JobState::Failed => &mut counts.failed,
                JobState::Canceled => &mut counts.canceled,
            } += 1;
        }
        counts.steps_total = self.steps.total.load(Relaxed);
        counts.step_batches_total = self.steps.batches.load(Relaxed);
        counts.step_seconds_total = self.steps.micros.load(Relaxed) as f64 / 1e6;
        counts.step_batches_by_size =
            self.steps.by_size.iter().enumerate().filter_map(|(n, c)| Some((n as u32, c.load(Relaxed))).filter(|(_, c)| *c > 0)).collect();
        counts
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
