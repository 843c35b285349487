use std::time::Duration;

use protocol::jobs::{JobError, JobOutput, JobState, JobSubmit, ParamSpec};
use protocol::ImageShape;

use super::{JobTable, Limits};
use crate::jobs::store::Store;
use crate::model::config::iterative::IterativeConfig;

const SHAPE: ImageShape = ImageShape { width: 2, height: 2, channels: 1 };

fn config() -> IterativeConfig {
    IterativeConfig {
        steps: 10,
        start: "start".into(),
        step: "step".into(),
        finish: "finish".into(),
        output: SHAPE,
        params: vec![ParamSpec { name: "class".into(), min: 0, max: 9 }],
    }
}

fn limits() -> Limits {
    Limits { max_queued: 2, retention: Duration::from_secs(3600), max_results: 100, max_result_bytes: 1 << 20 }
}

fn open(dir: &tempfile::TempDir, limits: Limits) -> JobTable {
    JobTable::open(Store::open(dir.path()).unwrap(), "m", config(), limits, 4).unwrap()
}

fn submit(class: i64, steps: Option<u32>, key: Option<&str>) -> JobSubmit {
    JobSubmit { request_id: 1, params: vec![class], steps, idempotency_key: key.map(String::from) }
}

fn output() -> JobOutput {
    JobOutput { shape: SHAPE, pixels: vec![1, 2, 3, 4] }
}

#[test]
fn a_job_runs_from_queued_to_succeeded_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(&dir, limits());
    let job = table.submit(submit(3, Some(4), None)).unwrap();
    assert_eq!((job.state, job.steps), (JobState::Queued, 4));
    assert!(job.id.starts_with(&format!("{}-", table.tag())));
    assert_eq!(table.output(&job.id), Err(JobError::NoResult(JobState::Queued)));
    let taken = table.take(8, false, Duration::ZERO);
    assert_eq!((taken.len(), taken[0].params.as_slice(), taken[0].steps), (1, &[3][..], 4));
    assert_eq!(table.progress(&[(&job.id, 2)]), vec![false]);
    let running = table.view(&job.id).unwrap();
    assert_eq!((running.state, running.step), (JobState::Running, 2));
    table.end(&job.id, Ok(Some(output())));
    assert_eq!(table.view(&job.id).unwrap().state, JobState::Succeeded);
    assert_eq!(table.output(&job.id).unwrap(), output());
    let counts = table.counts();
    assert_eq!((counts.succeeded, counts.queued, counts.running), (1, 0, 0));
}

#[test]
fn bounds_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(&dir, limits());
    let invalid = |r: Result<_, JobError>| match r {
        Err(JobError::Invalid { field, problem, too_large }) => (field, problem, too_large),
        other => panic!("expected Invalid, got {other:?}"),
    };
    let (field, problem, _) = invalid(table.submit(submit(10, None, None)));
    assert_eq!((field.as_str(), problem.as_str()), ("class", "10 is outside 0..=9"));
    let (field, problem, too_large) = invalid(table.submit(submit(1, Some(11), None)));
    assert_eq!(field, "steps");
    assert!(problem.contains("limit of 10 steps") && too_large, "{problem}");
    let (field, _, _) = invalid(table.submit(JobSubmit { params: vec![], ..submit(1, None, None) }));
    assert_eq!(field, "params");
    table.submit(submit(1, None, None)).unwrap();
    table.submit(submit(2, None, None)).unwrap();
    assert_eq!(table.submit(submit(3, None, None)), Err(JobError::QueueFull { limit: 2 }));
    assert_eq!(table.view("ffff-1"), Err(JobError::NotFound("ffff-1".into())));
}

#[test]
fn the_same_idempotency_key_gets_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(&dir, limits());
    let a = table.submit(submit(1, None, Some("k1"))).unwrap();
    let b = table.submit(submit(1, None, Some("k1"))).unwrap();
    let c = table.submit(submit(1, None, Some("k2"))).unwrap();
    assert_eq!(a.id, b.id);
    assert_ne!(a.id, c.id);
}

#[test]
fn cancel_drops_a_queued_job_at_once_and_a_running_one_at_its_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(&dir, limits());
    let queued = table.submit(submit(1, None, None)).unwrap();
    let running = table.submit(submit(2, None, None)).unwrap();
    assert_eq!(table.cancel(&queued.id).unwrap().state, JobState::Canceled);
    let taken = table.take(8, false, Duration::ZERO);
    assert_eq!(taken.len(), 1, "the canceled job is no longer queued");
    assert_eq!(table.cancel(&running.id).unwrap().state, JobState::Running);
    assert_eq!(table.progress(&[(&running.id, 3)]), vec![true]);
    table.end(&running.id, Ok(None));
    let view = table.view(&running.id).unwrap();
    assert_eq!((view.state, view.step), (JobState::Canceled, 3));
}

#[test]
fn a_reopened_table_keeps_results_and_fails_what_was_running() {
    let dir = tempfile::tempdir().unwrap();
    let (done, running, queued) = {
        let table = open(&dir, limits());
        let done = table.submit(submit(1, None, None)).unwrap().id;
        let running = table.submit(submit(2, None, None)).unwrap().id;
        table.take(1, false, Duration::ZERO);
        table.end(&done, Ok(Some(output())));
        table.take(1, false, Duration::ZERO);
        let queued = table.submit(submit(3, None, None)).unwrap().id;
        (done, running, queued)
    };
    let table = open(&dir, limits());
    assert_eq!(table.output(&done).unwrap(), output());
    for id in [&running, &queued] {
        let view = table.view(id).unwrap();
        assert_eq!(view.state, JobState::Failed);
        assert!(view.error.unwrap().contains("model host stopped"));
    }
    let next = table.submit(submit(4, None, None)).unwrap().id;
    assert!(![&done, &running, &queued].contains(&&next), "ids are not reused");
}

#[test]
fn finished_jobs_expire_by_age_then_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(&dir, Limits { max_queued: 8, max_results: 2, ..limits() });
    let ids: Vec<String> = (0..3).map(|c| table.submit(submit(c, None, None)).unwrap().id).collect();
    table.take(8, false, Duration::ZERO);
    for id in &ids {
        table.end(id, Ok(Some(output())));
    }
    // Over the count bound by one: the oldest went.
    assert_eq!(table.counts().succeeded, 2);
    let gone = ids.iter().filter(|id| table.view(id).is_err()).count();
    assert_eq!(gone, 1);
    table.sweep(super::now_ms() + 3_600_001);
    assert_eq!(table.counts().succeeded, 0);
    drop(table);
    assert!(Store::open(dir.path()).unwrap().load_all().unwrap().is_empty(), "their files went too");
}

#[test]
fn a_stopping_host_fails_what_is_unfinished_and_keeps_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(&dir, limits());
    let running = table.submit(submit(1, None, None)).unwrap().id;
    table.take(1, false, Duration::ZERO);
    let queued = table.submit(submit(2, None, None)).unwrap().id;
    assert_eq!(table.unfinished(), 2);
    assert_eq!(table.fail_unfinished("stopping"), 2);
    assert_eq!(table.unfinished(), 0);
    table.end(&running, Ok(Some(output())));
    for id in [&running, &queued] {
        let view = table.view(id).unwrap();
        assert_eq!((view.state, view.error.as_deref()), (JobState::Failed, Some("stopping")));
    }
    assert!(table.take(8, false, Duration::ZERO).is_empty());
}
