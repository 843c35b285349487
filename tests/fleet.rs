//! One gateway over a fleet of hosts: two models side by side, replicas of
//! one model sharing load and surviving a SIGKILL, a version swap under
//! steady load with no failed request, hosts found and dropped through a
//! watched directory, and whatever in that directory is not a trusted host
//! skipped while the good hosts serve on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn sock(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn start_host_on(scratch: &Scratch, socket: &str, model: &Path) -> Process {
    scratch.start_host(&["--socket", socket, "--model", &model.display().to_string()])
}

/// A copy of the digits model with `edit` applied to its model.toml.
fn digits_variant(scratch: &Scratch, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = scratch.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(digits_model().join("model.pt"), dir.join("model.pt")).unwrap();
    let toml = std::fs::read_to_string(digits_model().join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), edit(toml)).unwrap();
    dir
}

/// Status and body of a GET; (0, null) while nothing listens yet.
async fn get_json(client: &reqwest::Client, url: String) -> (u16, Value) {
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// One predict's outcome: (status, has Retry-After, answered version, right label).
type Outcome = (u16, bool, String, bool);

async fn predict(client: &reqwest::Client, url: &str, sample: &Sample) -> Outcome {
    let (status, headers, body) = post_image(client, url, sample.bytes.clone(), "image/png").await;
    let right = status != 200 || top_label(&body) == sample.label;
    let version = body["version"].as_str().unwrap_or_default().to_string();
    (status.as_u16(), headers.contains_key("retry-after"), version, right)
}

/// A host's counters through the gateway, by its socket.
async fn host_status(client: &reqwest::Client, gateway: &Gateway, socket: &str) -> Value {
    let url = reqwest::Url::parse_with_params(&gateway.url("/v1/host/status"), &[("host", socket)]).unwrap();
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// One detector request with reference item `i`; its `labels` output and the reference's.
async fn detect(client: &reqwest::Client, infer_url: &str, reference: &Value, i: usize) -> (Value, Value) {
    let item = &reference["items"][i];
    let body = json!({"inputs": [
        {"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": item["inputs"]["image"]},
        {"name": "score_threshold", "datatype": "FP32", "shape": [1, 1], "data": item["inputs"]["score_threshold"]},
    ], "outputs": [{"name": "labels"}]});
    let r = client.post(infer_url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    (answer["outputs"][0]["data"].clone(), item["outputs"]["labels"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_models_behind_one_gateway_answer_concurrently() {
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let _digits = start_host_on(&scratch, &sock(&hosts, "digits.sock"), &digits_model());
    let _detector = start_host_on(&scratch, &sock(&hosts, "detector.sock"), &root().join("models/detector"));
    let gateway = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string()]);
    let client = reqwest::Client::new();
    let both = eventually(Duration::from_secs(120), async || get_json(&client, gateway.url("/health/ready")).await.1["models"] == json!(["detector", "digits"])).await;
    assert!(both.is_some(), "both models ready: {}", get_json(&client, gateway.url("/health/ready")).await.1);
    let (_, index) = get_json(&client, gateway.url("/v1/models")).await;
    assert_eq!(index["models"].as_array().unwrap().len(), 2, "{index}");
    let repository: Value = client.post(gateway.url("/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    let states: Vec<(&str, &str)> = repository.as_array().unwrap().iter().map(|m| (m["name"].as_str().unwrap(), m["state"].as_str().unwrap())).collect();
    assert!(states.contains(&("digits", "READY")) && states.contains(&("detector", "READY")), "{repository}");

    let reference: Arc<Value> = Arc::new(serde_json::from_str(&std::fs::read_to_string(root().join("models/detector/reference.json")).unwrap()).unwrap());
    let samples = Arc::new(rightly_classified(&gateway, "gray8", 60).await);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (digits_client, url, samples) = (client.clone(), gateway.predict_url(), samples.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let sample = &samples[(worker * 20 + i) % samples.len()];
                let (status, _, _, right) = predict(&digits_client, &url, sample).await;
                assert!(status == 200 && right, "digits answer {status} (right label: {right})");
            }
        }));
        let (client, reference, url) = (client.clone(), reference.clone(), gateway.url("/v2/models/detector/infer"));
        tasks.push(tokio::spawn(async move {
            let n = reference["items"].as_array().unwrap().len();
            for i in 0..20 {
                let (got, want) = detect(&client, &url, &reference, (worker + i) % n).await;
                assert_eq!(got, want, "detector labels");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a worker failed");
    }
}

/// Answers around a replica's SIGKILL: each one right, a 200 or a 503 with
/// Retry-After within a second of the kill, and the survivor answering after it.
fn assert_only_fast_503s_after(killed_at: Instant, answers: &[(Instant, Outcome)]) {
    let (mut counts, mut served_after): (BTreeMap<u16, usize>, usize) = (BTreeMap::new(), 0);
    for (at, (status, retry_after, _, right)) in answers {
        *counts.entry(*status).or_default() += 1;
        served_after += usize::from(*status == 200 && *at > killed_at + Duration::from_millis(100));
        assert!(right, "an answer belonged to another image");
        match status {
            200 => {}
            503 => {
                assert!(retry_after, "503 without Retry-After");
                assert!(*at < killed_at + Duration::from_secs(1), "503 {:?} after the kill", *at - killed_at);
            }
            other => panic!("status {other}"),
        }
    }
    println!("SIGKILL of one replica under load: {counts:?}; {served_after} answered by the survivor after the kill");
    assert!(served_after > 0, "the surviving replica answered nothing after the kill: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_load_and_survive_a_sigkill() {
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let (a, b) = (sock(&hosts, "a.sock"), sock(&hosts, "b.sock"));
    let mut host_a = start_host_on(&scratch, &a, &digits_model());
    let _host_b = start_host_on(&scratch, &b, &digits_model());
    let mut pids = vec![host_a.pid(), _host_b.pid()];
    let gateway = scratch.start_gateway_for(&["--host-socket", &a, "--host-socket", &b]);
    let client = reqwest::Client::new();
    let both_ready = eventually(Duration::from_secs(120), async || {
        let (_, hosts) = get_json(&client, gateway.url("/v1/hosts")).await;
        hosts["hosts"].as_array().is_some_and(|h| h.iter().filter(|h| h["phase"] == "ready").count() == 2)
    });
    assert!(both_ready.await.is_some(), "two ready hosts");
    let samples = Arc::new(rightly_classified(&gateway, "gray8", 60).await);

    // 8 clients at once: 40 requests each, or for `seconds`.
    let load = |seconds: Option<f64>| {
        let mut tasks = Vec::new();
        for worker in 0..8usize {
            let (client, url, samples) = (client.clone(), gateway.predict_url(), samples.clone());
            tasks.push(tokio::spawn(async move {
                let (started, mut out) = (Instant::now(), Vec::new());
                for i in 0.. {
                    let done = match seconds {
                        Some(s) => started.elapsed().as_secs_f64() > s,
                        None => i == 40,
                    };
                    if done {
                        break;
                    }
                    let answer = predict(&client, &url, &samples[(worker * 7 + i) % samples.len()]).await;
                    out.push((Instant::now(), answer));
                }
                out
            }));
        }
        tasks
    };
    // Idle replicas tie at 0 outstanding: one request at a time alternates
    // (rightly_classified sent 60 of them, one by one).
    let served = |status: Value| status["requests_done"].as_u64().unwrap_or_else(|| panic!("{status}")) as f64;
    let counts = async || (served(host_status(&client, &gateway, &a).await), served(host_status(&client, &gateway, &b).await));
    let (idle_a, idle_b) = counts().await;
    assert!((idle_a - idle_b).abs() <= 1.0, "one at a time, replicas alternate: {idle_a}/{idle_b}");

    // Under load each replica gets work: the first two requests find one
    // outstanding or tie at zero (round robin). How many each completes is
    // the scheduler's (CI's 2 cores gave 274/46); the policy's exact counts
    // are checked with stand-in hosts below.
    for task in load(None) {
        assert!(task.await.unwrap().iter().all(|(_, (s, _, _, right))| *s == 200 && *right));
    }
    let (done_a, done_b) = counts().await;
    let (done_a, done_b) = (done_a - idle_a, done_b - idle_b);
    println!("replicas under 8 clients: completed {done_a}/{done_b}");
    assert!(done_a > 0.0 && done_b > 0.0, "completed {done_a}/{done_b}: one replica got nothing");

    // SIGKILL one replica under load: only fast 503s with Retry-After,
    // and only within a second of the kill.
    let tasks = load(Some(3.0));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    host_a.kill();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    assert_only_fast_503s_after(killed_at, &answers);

    // Back on the same socket: served again, no gateway restart.
    let _host_a = start_host_on(&scratch, &a, &digits_model());
    pids.push(_host_a.pid());
    let back = eventually(Duration::from_secs(60), async || host_status(&client, &gateway, &a).await["phase"].get("Ready").is_some());
    assert!(back.await.is_some(), "the restarted replica is used again");
    drop((_host_a, _host_b, gateway));
    assert_eq!(segments_of(&pids), Vec::<String>::new(), "segments left in /dev/shm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_get_requests_by_fewest_outstanding() {
    // Stand-in hosts that take every lease request and never answer: each
    // request stays outstanding, so where the next one goes is decided by
    // the counts alone, whatever the CPU is doing.
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let (a, b) = (hosts.join("a.sock"), hosts.join("b.sock"));
    let (leases_a, leases_b) = (silent_host::start(&a), silent_host::start(&b));
    let gateway = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string()]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let sample = testset("gray8").remove(0);
    let url = format!("{}?timeout_ms=3000", gateway.predict_url());
    let stuck: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, bytes) = (client.clone(), url.clone(), sample.bytes.clone());
            tokio::spawn(async move { post_image(&client, &url, bytes, "image/png").await.0 })
        })
        .collect();
    let all_in = eventually(Duration::from_secs(5), async || leases_a.load(std::sync::atomic::Ordering::SeqCst) + leases_b.load(std::sync::atomic::Ordering::SeqCst) == 8);
    if all_in.await.is_none() {
        let (_, listed) = get_json(&client, gateway.url("/v1/hosts")).await;
        let mut statuses = Vec::new();
        for request in stuck {
            statuses.push(request.await.unwrap());
        }
        panic!("8 leases asked: {} and {}; {listed}; statuses {statuses:?}; log {}", leases_a.load(std::sync::atomic::Ordering::SeqCst), leases_b.load(std::sync::atomic::Ordering::SeqCst), gateway.process.log());
    }
    let (on_a, on_b) = (leases_a.load(std::sync::atomic::Ordering::SeqCst), leases_b.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!((on_a, on_b), (4, 4), "8 stuck requests over two replicas by fewest outstanding");
    for request in stuck {
        assert_eq!(request.await.unwrap(), 504, "a request no host answers ends at its deadline");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_swap_under_steady_load_fails_nothing() {
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let v2_model = digits_variant(&scratch, "digits-v2", |toml| toml.replace("version = \"1\"", "version = \"2\""));
    let (v1_socket, v2_socket) = (sock(&hosts, "digits-1.sock"), sock(&hosts, "digits-2.sock"));
    let mut v1 = start_host_on(&scratch, &v1_socket, &digits_model());
    let gateway = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string()]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let samples = Arc::new(rightly_classified(&gateway, "gray8", 60).await);

    // 200 requests a second for 20 s: 20 clients, each one every 100 ms.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..20usize {
        let (client, url, samples) = (client.clone(), gateway.predict_url(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut out = Vec::new();
            for i in 0..200 {
                tick.tick().await;
                let sent = Instant::now();
                out.push((sent, predict(&client, &url, &samples[(worker * 13 + i) % samples.len()]).await));
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _v2 = start_host_on(&scratch, &v2_socket, &v2_model);
    let ready = eventually(Duration::from_secs(60), async || get_json(&client, gateway.url("/v2/models/digits/versions/2/ready")).await.0 == 200).await;
    assert!(ready.is_some(), "version 2 became ready");
    let v2_ready_at = Instant::now();
    println!("version 2 ready {:?} into the load", v2_ready_at - started);
    assert_eq!(host_status(&client, &gateway, &v1_socket).await["model_loads"], 1);
    // What scripts/model-swap does: give every gateway a second to see the
    // new host, then drain the old one (SIGTERM: in-flight answered).
    tokio::time::sleep(Duration::from_secs(1)).await;
    v1.signal(Signal::SIGTERM);
    assert_eq!(v1.wait_exit(Duration::from_secs(20)), Some(0), "the old host drained and exited 0");

    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        for (sent, (status, _, version, right)) in task.await.unwrap() {
            assert_eq!(status, 200, "a request failed during the swap");
            assert!(right, "an answer belonged to another image");
            if sent > v2_ready_at {
                assert_eq!(version, "2", "a request sent after version 2 was ready went to {version}");
            }
            *by_version.entry(version).or_default() += 1;
        }
    }
    println!("answers by version over the swap: {by_version:?}");
    assert_eq!(by_version.keys().collect::<Vec<_>>(), ["1", "2"], "answered by version 1, then 2, never by neither");
    assert_eq!(by_version.values().sum::<usize>(), 4000);
    assert_eq!(host_status(&client, &gateway, &v2_socket).await["model_loads"], 1);
}

#[tokio::test]
async fn hosts_appear_and_leave_through_the_directory_within_a_second() {
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let gateway = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string()]);
    gateway.wait_for("/health/live", Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    assert_eq!(get_json(&client, gateway.url("/health/ready")).await.0, 503, "no host yet");

    // A ready host outside the directory, watched by a gateway of its own.
    let outside = scratch.dir.path().join("outside.sock");
    let _host = start_host_on(&scratch, &outside.display().to_string(), &digits_model());
    let witness = scratch.start_gateway_for(&["--host-socket", &outside.display().to_string()]);
    witness.wait_ready().await;

    // Moved in: served within a second.
    let inside = hosts.join("digits.sock");
    std::fs::rename(&outside, &inside).unwrap();
    let sample = &testset("gray8")[0];
    let took = eventually(Duration::from_secs(1), async || predict(&client, &gateway.predict_url(), sample).await.0 == 200).await;
    println!("host socket added: served after {took:?}");
    assert!(took.is_some(), "a host added to the directory was not served within 1 s");

    // Moved out: dropped within a second (the host itself runs on).
    std::fs::rename(&inside, &outside).unwrap();
    // Dropped once its last request is answered: no host known, so 503
    // "no model host found" (the gateway cannot tell an unknown model
    // from one whose host has not appeared yet).
    let took = eventually(Duration::from_secs(1), async || {
        get_json(&client, gateway.url("/v1/hosts")).await.1["hosts"] == json!([])
            && predict(&client, &gateway.predict_url(), sample).await.0 == 503
    });
    let took = took.await;
    println!("host socket removed: dropped after {took:?}");
    assert!(took.is_some(), "a host removed from the directory was still served after 1 s: {}", get_json(&client, gateway.url("/v1/hosts")).await.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_is_not_a_trusted_host_is_skipped_and_the_good_host_serves_on() {
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let _good = start_host_on(&scratch, &sock(&hosts, "good.sock"), &digits_model());
    // Same name and version, another signature (its labels).
    let impostor_model = digits_variant(&scratch, "impostor", |toml| toml.replace("\"9\"]", "\"nine\"]"));
    let gateway = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string()]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();

    // The bad entries arrive while the gateway serves.
    std::fs::write(hosts.join("notes.txt"), b"not a socket").unwrap();
    drop(std::os::unix::net::UnixListener::bind(hosts.join("stale.sock")).unwrap());
    let silent = tokio::net::UnixListener::bind(hosts.join("silent.sock")).unwrap();
    silent_host::start_speaking(&hosts.join("old.sock"), protocol::PROTOCOL_VERSION - 1);
    let _impostor = start_host_on(&scratch, &sock(&hosts, "impostor.sock"), &impostor_model);

    let samples = Arc::new(rightly_classified(&gateway, "gray8", 60).await);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let asked = Instant::now();
        let (status, _, _, right) = predict(&client, &gateway.predict_url(), &samples[i % samples.len()]).await;
        assert!(status == 200 && right, "the good host's answers, throughout");
        slowest = slowest.max(asked.elapsed());
        i += 1;
    }
    println!("{i} requests while bad entries were present; slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "a bad entry slowed the good host's requests: {slowest:?}");
    drop(silent);

    let log = gateway.process.log();
    for (entry, why) in [
        ("notes.txt", "not a socket"),
        ("stale.sock", "Connection refused"),
        ("silent.sock", "no welcome from the host within 5 s"),
        ("impostor.sock", "another signature than the host on"),
        ("old.sock", "the host speaks protocol version"),
    ] {
        let line = log.lines().find(|l| l.contains(entry) && l.contains(why));
        assert!(line.is_some(), "no log line for {entry} ({why}) in\n{log}");
        let lines = log.lines().filter(|l| l.contains(entry) && l.contains(why)).count();
        assert_eq!(lines, 1, "{entry} logged {lines} times, not once");
    }
    let (_, listed) = get_json(&client, gateway.url("/v1/models")).await;
    assert_eq!(listed["models"].as_array().unwrap().len(), 1, "only the good host: {listed}");
}

#[tokio::test]
async fn untrusted_hosts_and_directories_are_refused() {
    let scratch = Scratch::new();
    let hosts = scratch.hosts_dir();
    let socket = sock(&hosts, "digits.sock");
    let _host = start_host_on(&scratch, &socket, &digits_model());
    // A host running as a user this gateway does not trust.
    let gateway = scratch.start_gateway_for(&["--host-socket", &socket, "--allowed-host-uids", "4242"]);
    gateway.wait_for("/health/live", Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    let refused = eventually(Duration::from_secs(60), async || {
        let (_, hosts) = get_json(&client, gateway.url("/v1/hosts")).await;
        hosts["hosts"][0]["error"].as_str().is_some_and(|e| e.contains("not a trusted host user"))
    });
    assert!(refused.await.is_some(), "{}", get_json(&client, gateway.url("/v1/hosts")).await.1);
    assert_eq!(predict(&client, &gateway.predict_url(), &testset("gray8")[0]).await.0, 503);

    // A directory others can write to: the gateway does not start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut open_dir = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string()]);
    let code = open_dir.process.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1), "a gateway over a world-writable --host-dir must refuse to start");
    assert!(open_dir.process.log().contains("chmod go-w"), "{}", open_dir.process.log());
}
