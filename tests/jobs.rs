//! Jobs on an iterative model (models/digit-diffusion), through the real
//! binaries: the digits they draw are judged by the digits classifier
//! behind the same gateway; cancel, continuous batching, gateways and
//! hosts that die mid-job, and the 4xx of every limit.
//!
//! Where a test needs a job to be still running when it acts, the host
//! runs with `--job-step-interval-ms`, so that a job of 200 steps lasts
//! seconds: the test waits for the state it needs (never a fixed sleep),
//! and the interval only keeps that state long enough to act on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use integration_tests::{Gateway, Process, Scratch, digits_model, eventually, model_toml_copy, post_image, root, top_label, with_batching};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const JOBS: &str = "/v1/models/digit-diffusion/jobs";

fn diffusion_model() -> PathBuf {
    let dir = root().join("models/digit-diffusion");
    assert!(dir.join("model.pt").exists(), "models/digit-diffusion is missing: run scripts/setup first");
    dir
}

/// A host of the diffusion model on `socket`, its jobs under the scratch's `state/`.
fn start_diffusion_host(scratch: &Scratch, socket: &str, extra: &[&str]) -> Process {
    let state = scratch.dir.path().join("state").display().to_string();
    let model = diffusion_model().display().to_string();
    let mut args = vec!["--socket", socket, "--state-dir", &state];
    if !extra.contains(&"--model") {
        args.extend(["--model", &model]);
    }
    args.extend_from_slice(extra);
    scratch.start_host(&args)
}

/// The diffusion host and a digits host (the judge), and a gateway to both.
fn judged_setup(scratch: &Scratch, extra: &[&str]) -> (Process, Process, Gateway, String) {
    let diffusion_socket = scratch.dir.path().join("diffusion.sock").display().to_string();
    let digits_socket = scratch.dir.path().join("digits.sock").display().to_string();
    let diffusion = start_diffusion_host(scratch, &diffusion_socket, extra);
    let digits = scratch.start_host(&["--socket", &digits_socket, "--model", &digits_model().display().to_string()]);
    let gateway = scratch.start_gateway_for(&["--host-socket", &diffusion_socket, "--host-socket", &digits_socket]);
    (diffusion, digits, gateway, diffusion_socket)
}

async fn submit(client: &reqwest::Client, gateway: &Gateway, body: Value) -> (u16, Value) {
    let response = client.post(gateway.url(JOBS)).json(&body).send().await.expect("submit");
    (response.status().as_u16(), response.json().await.expect("submit answers JSON"))
}

async fn job(client: &reqwest::Client, gateway: &Gateway, id: &str) -> (u16, Value) {
    let response = client.get(gateway.url(&format!("/v1/jobs/{id}"))).send().await.expect("job status");
    (response.status().as_u16(), response.json().await.expect("status answers JSON"))
}

/// Polls the job until `done` holds; its last answer. A 503 (the
/// gateway's link to a restarting host is down) is asked again.
async fn wait_job(client: &reqwest::Client, gateway: &Gateway, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let reached = eventually(limit, async || {
        let (status, body) = job(client, gateway, id).await;
        if status == 503 {
            return false;
        }
        assert_eq!(status, 200, "{body}");
        last = body;
        done(&last)
    })
    .await;
    assert!(reached.is_some(), "job {id} did not get there within {limit:?}: {last}");
    last
}

fn finished(job: &Value) -> bool {
    ["succeeded", "failed", "canceled"].contains(&job["status"].as_str().unwrap_or(""))
}

/// The job's result; a 503 (the host is restarting) is asked again.
async fn result_png(client: &reqwest::Client, gateway: &Gateway, id: &str) -> Vec<u8> {
    let url = gateway.url(&format!("/v1/jobs/{id}/result"));
    let mut response = client.get(&url).send().await.expect("result");
    for _ in 0..600 {
        if response.status() != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = client.get(&url).send().await.expect("result");
    }
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    response.bytes().await.expect("result body").to_vec()
}

/// The value of a metric line starting with `prefix` in /metrics, summed over its series.
async fn metric(client: &reqwest::Client, gateway: &Gateway, prefix: &str) -> Vec<(String, f64)> {
    let text = client.get(gateway.url("/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// 100 jobs at once, ten of each class: each result is a 32x32 PNG, dark
/// ink on light paper, that the digits classifier reads as the class asked
/// for at least 9 times in 10 (the bar); the step metrics show
/// that their steps ran in batches of more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_jobs_draw_the_digits_asked_for_in_shared_steps() {
    let scratch = Scratch::new();
    // 5 ms between steps: 200 steps last a second, so jobs submitted
    // together are running together (the batch is what is measured).
    let (_diffusion, _digits, gateway, diffusion_socket) = judged_setup(&scratch, &["--job-step-interval-ms", "5"]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();

    let asked: Vec<(i64, i64)> = (0..10).flat_map(|class| (0..10).map(move |i| (class, 1000 + class * 10 + i))).collect();
    let submits = asked.iter().map(|&(class, seed)| submit(&client, &gateway, json!({"class": class, "seed": seed})));
    let jobs: Vec<(u16, Value)> = futures::future::join_all(submits).await;
    let mut right: HashMap<i64, usize> = HashMap::new();
    for ((status, body), &(class, _)) in jobs.iter().zip(&asked) {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["status"], "queued");
        let id = body["id"].as_str().expect("an id");
        assert_eq!(body["urls"]["result"], format!("/v1/jobs/{id}/result"));
        let done = wait_job(&client, &gateway, id, Duration::from_secs(120), finished).await;
        assert_eq!((done["status"].as_str(), done["step"].as_u64(), done["progress"].as_f64()), (Some("succeeded"), Some(200), Some(1.0)), "{done}");
        let png = result_png(&client, &gateway, id).await;
        let image = image::load_from_memory(&png).expect("a PNG").into_luma8();
        assert_eq!(image.dimensions(), (32, 32));
        let (corner, mean) = (image.get_pixel(0, 0)[0], image.pixels().map(|p| f64::from(p[0])).sum::<f64>() / 1024.0);
        assert!(corner > 200 && mean > 128.0, "light paper: corner {corner}, mean {mean}");
        let url = gateway.url("/v1/models/digits/predict");
        let (status, _, answer) = post_image(&client, &url, png, "image/png").await;
        assert_eq!(status, 200, "{answer}");
        if top_label(&answer) == class.to_string() {
            *right.entry(class).or_default() += 1;
        }
    }
    for class in 0..10 {
        assert!(right.get(&class).copied().unwrap_or(0) >= 9, "class {class}: {right:?} of 10 each read right");
    }

    let steps = metric(&client, &gateway, "splitserve_host_job_steps_total").await;
    let calls = metric(&client, &gateway, "splitserve_host_job_step_batches_total").await;
    let (steps, calls) = (steps[0].1, calls[0].1);
    assert_eq!(steps, 100.0 * 200.0);
    assert!(steps / calls > 1.0, "jobs stepped together: {steps} steps in {calls} calls");
    let by_size = metric(&client, &gateway, "splitserve_host_job_step_batches_by_size_total").await;
    assert!(by_size.iter().any(|(k, n)| *n > 0.0 && !k.contains("batch_size=\"1\"")), "{by_size:?}");
    let jobs = metric(&client, &gateway, "splitserve_host_jobs{").await;
    assert!(jobs.iter().any(|(k, n)| k.contains("state=\"succeeded\"") && *n == 100.0), "{jobs:?}");
    let url = gateway.url("/v1/host/status");
    let status: Value = client.get(url).query(&[("host", &diffusion_socket)]).send().await.unwrap().json().await.unwrap();
    assert_eq!((status["jobs"]["succeeded"].as_u64(), status["jobs"]["running"].as_u64()), (Some(100), Some(0)), "{status}");
}

/// A cancel takes effect before the job's next step: the job ends
/// `canceled` at most one step after the step its cancel answer showed,
/// has no result (409), and its event stream ends with that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_within_one_step() {
    let scratch = Scratch::new();
    let socket = scratch.socket().display().to_string();
    let _host = start_diffusion_host(&scratch, &socket, &["--job-step-interval-ms", "20"]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();

    let (status, body) = submit(&client, &gateway, json!({"class": 4, "seed": 7})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    let events = tokio::spawn({
        let (client, url) = (client.clone(), gateway.url(&format!("/v1/jobs/{id}/events")));
        async move { client.get(url).send().await.expect("events").text().await.expect("the stream ends") }
    });
    wait_job(&client, &gateway, &id, Duration::from_secs(30), |j| j["step"].as_u64() >= Some(2)).await;
    let canceling = client.post(gateway.url(&format!("/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(canceling.status(), 202);
    let canceling: Value = canceling.json().await.expect("cancel answers JSON");
    let asked_at = canceling["step"].as_u64().expect("a step");
    let done = wait_job(&client, &gateway, &id, Duration::from_secs(30), finished).await;
    assert_eq!(done["status"], "canceled", "{done}");
    let stopped_at = done["step"].as_u64().expect("a step");
    assert!(stopped_at <= asked_at + 1 && stopped_at < 200, "asked at step {asked_at}, stopped at {stopped_at}");

    let response = client.get(gateway.url(&format!("/v1/jobs/{id}/result"))).send().await.expect("result");
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["type"], "no_result");
    assert!(body["error"].as_str().unwrap().contains("canceled"), "{body}");

    let stream = tokio::time::timeout(Duration::from_secs(30), events).await.expect("the stream ends").expect("events task");
    let states: Vec<Value> = stream.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).expect("JSON data")).collect();
    assert!(states.len() >= 2, "{stream}");
    assert_eq!(states.last().unwrap()["status"], "canceled", "{stream}");
    assert!(stream.contains("event: job"), "{stream}");
    let steps: Vec<u64> = states.iter().filter_map(|s| s["step"].as_u64()).collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "progress only goes forward: {steps:?}");
}

/// The host owns its jobs: a gateway SIGKILLed mid-job loses nothing (the
/// job is answered by a restarted gateway and by another one); a host
/// restarted after a job finished still returns its result, and one
/// stopped with SIGTERM finishes its running job first (within its
/// drain); a job running when its host is killed reads `failed`, with the
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_outlive_gateways_and_host_restarts() {
    let scratch = Scratch::new();
    let socket = scratch.socket().display().to_string();
    // A drain long enough for a job of 200 steps on a loaded machine.
    let slow = ["--job-step-interval-ms", "20", "--drain-timeout-secs", "120"];
    let mut host = start_diffusion_host(&scratch, &socket, &slow);
    let mut first = scratch.start_gateway(&[]);
    let second = scratch.start_gateway(&[]);
    first.wait_ready().await;
    second.wait_ready().await;
    let client = reqwest::Client::new();

    let (status, body) = submit(&client, &first, json!({"class": 2, "seed": 5})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    wait_job(&client, &first, &id, Duration::from_secs(30), |j| j["status"] == "running").await;
    first.process.kill(); // SIGKILL, and reaped
    let restarted = scratch.start_gateway_on_port(first.port);
    restarted.wait_ready().await;
    let (status, seen) = job(&client, &restarted, &id).await;
    assert_eq!(status, 200, "{seen}");
    assert!(["running", "succeeded"].contains(&seen["status"].as_str().unwrap()), "{seen}");
    let done = wait_job(&client, &second, &id, Duration::from_secs(60), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let png = result_png(&client, &second, &id).await;

    // The host restarts (SIGTERM, then again on the same state directory)
    // while another job runs: the drain lets that job finish first.
    let (status, body) = submit(&client, &second, json!({"class": 8, "seed": 6})).await;
    assert_eq!(status, 202, "{body}");
    let drained = body["id"].as_str().expect("an id").to_string();
    wait_job(&client, &second, &drained, Duration::from_secs(30), |j| j["status"] == "running").await;
    host.signal(Signal::SIGTERM);
    host.wait_exit(Duration::from_secs(150)).expect("the host stops on SIGTERM, after its drain");
    host = start_diffusion_host(&scratch, &socket, &slow);
    second.wait_ready().await;
    assert_eq!(result_png(&client, &second, &id).await, png, "the result survives the host");
    let (status, body) = job(&client, &second, &drained).await;
    assert_eq!((status, body["status"].as_str(), body["step"].as_u64()), (200, Some("succeeded"), Some(200)), "{body}");

    // A job running when its host is SIGKILLed is failed, with the reason, after the restart.
    let (status, body) = submit(&client, &second, json!({"class": 3, "seed": 9})).await;
    assert_eq!(status, 202, "{body}");
    let lost = body["id"].as_str().expect("an id").to_string();
    wait_job(&client, &second, &lost, Duration::from_secs(30), |j| j["status"] == "running").await;
    host.kill();
    let _host = start_diffusion_host(&scratch, &socket, &slow);
    second.wait_ready().await;
    let failed = wait_job(&client, &second, &lost, Duration::from_secs(30), finished).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("model host stopped"), "{failed}");
    let (status, body) = job(&client, &second, &id).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
}

/// Every mistake and every limit gets its own 4xx, naming the field or limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_and_limits_get_clear_client_errors() {
    let scratch = Scratch::new();
    // One job runs at a time and one may wait: a third is over the limit.
    let toml = model_toml_copy(&diffusion_model(), scratch.dir.path(), "one.toml", |t| with_batching(t, "max_batch_size = 1"));
    let socket = scratch.socket().display().to_string();
    let _host = start_diffusion_host(&scratch, &socket, &["--model", &toml, "--job-step-interval-ms", "50", "--job-max-queued", "1"]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let expect = |(status, body): (u16, Value), want: u16, kind: &str, text: &str| {
        assert_eq!((status, body["type"].as_str()), (want, Some(kind)), "{body}");
        assert!(body["error"].as_str().unwrap().contains(text), "{body} should say {text:?}");
    };

    for id in ["zz", "abc-1", "ffffffff-1"] {
        expect(job(&client, &gateway, id).await, 404, "job_not_found", id);
    }
    let r = client.post(gateway.url("/v1/models/nope/jobs")).json(&json!({"class": 1})).send().await.unwrap();
    expect((r.status().as_u16(), r.json().await.unwrap()), 404, "model_not_found", "nope");
    expect(submit(&client, &gateway, json!({"class": 10, "seed": 1})).await, 400, "invalid_request", "class: 10 is outside 0..=9");
    expect(submit(&client, &gateway, json!({"seed": 1})).await, 400, "invalid_request", "class: missing");
    expect(submit(&client, &gateway, json!({"class": 1, "seed": 1, "steps": 201})).await, 413, "job_too_large", "limit of 200 steps");
    let big = json!({"class": 1, "seed": 1, "note": "x".repeat(20_000)});
    expect(submit(&client, &gateway, big).await, 413, "body_too_large", "16384");
    let r = client.post(gateway.url(JOBS)).header("idempotency-key", "k".repeat(129)).json(&json!({"class": 1, "seed": 1})).send().await.unwrap();
    expect((r.status().as_u16(), r.json().await.unwrap()), 413, "job_too_large", "128-byte limit");

    // Predict on an iterative model: a job with Prefer: respond-async, else a 400 saying so.
    let predict = gateway.url("/v1/models/digit-diffusion/predict");
    let r = client.post(&predict).json(&json!({"class": 1, "seed": 1})).send().await.unwrap();
    expect((r.status().as_u16(), r.json().await.unwrap()), 400, "invalid_request", "Prefer: respond-async");
    let r = client.post(&predict).header("prefer", "respond-async").header("idempotency-key", "once").json(&json!({"class": 1, "seed": 1})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/v1/jobs/"));
    let running: Value = r.json().await.unwrap();
    let again = client.post(gateway.url(JOBS)).header("idempotency-key", "once").json(&json!({"class": 1, "seed": 1})).send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], running["id"], "the same key, the same job");

    // Over the queue limit: one running, one waiting, the third refused.
    wait_job(&client, &gateway, running["id"].as_str().unwrap(), Duration::from_secs(30), |j| j["status"] == "running").await;
    let (status, waiting) = submit(&client, &gateway, json!({"class": 2, "seed": 2})).await;
    assert_eq!((status, waiting["status"].as_str()), (202, Some("queued")), "{waiting}");
    let r = client.post(gateway.url(JOBS)).json(&json!({"class": 3, "seed": 3})).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    expect((r.status().as_u16(), r.json().await.unwrap()), 429, "too_many_jobs", "1 jobs queued (the host's --job-max-queued)");
    let r = client.get(gateway.url(&format!("/v1/jobs/{}/result", waiting["id"].as_str().unwrap()))).send().await.unwrap();
    expect((r.status().as_u16(), r.json().await.unwrap()), 409, "no_result", "queued");
}

/// Two hosts of the model behind two gateways: submits are spread over
/// both (the replicas differ only in their tags, so neither is refused),
/// and each job is answered, through either gateway, by the host its id names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_names_its_host_among_replicas() {
    let scratch = Scratch::new();
    let sockets: Vec<String> = ["a.sock", "b.sock"].iter().map(|s| scratch.dir.path().join(s).display().to_string()).collect();
    let _hosts: Vec<Process> = sockets.iter().map(|s| start_diffusion_host(&scratch, s, &["--job-step-interval-ms", "5"])).collect();
    let flags = ["--host-socket", &sockets[0], "--host-socket", &sockets[1]];
    let (first, second) = (scratch.start_gateway_for(&flags), scratch.start_gateway_for(&flags));
    let client = reqwest::Client::new();
    // Ready means a ready host per model: wait for both hosts here.
    for gateway in [&first, &second] {
        let both = eventually(Duration::from_secs(120), async || {
            let Ok(r) = client.get(gateway.url("/v1/hosts")).send().await else { return false };
            let hosts: Value = r.json().await.unwrap_or_default();
            hosts["hosts"].as_array().is_some_and(|h| h.len() == 2 && h.iter().all(|h| h["phase"] == "ready"))
        })
        .await;
        assert!(both.is_some(), "both hosts ready behind {}", gateway.process.name);
    }

    // One at a time: equally idle replicas take turns.
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, body) = submit(&client, &first, json!({"class": i % 10, "seed": i})).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("an id").to_string());
    }
    let tags: std::collections::BTreeSet<&str> = ids.iter().map(|id| id.split('-').next().unwrap()).collect();
    assert_eq!(tags.len(), 2, "both hosts took jobs: {ids:?}");
    for id in &ids {
        let done = wait_job(&client, &second, id, Duration::from_secs(60), finished).await;
        assert_eq!((done["id"].as_str(), done["status"].as_str()), (Some(id.as_str()), Some("succeeded")), "{done}");
        assert_eq!(result_png(&client, &second, id).await, result_png(&client, &first, id).await);
    }
}
