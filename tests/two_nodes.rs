//! Past one machine with a load balancer that already exists, not a
//! cluster of our own: two "nodes" (network namespaces, each with its own
//! model-host and two gateways on its own address) behind HAProxy, the
//! stand-in for a Kubernetes Service. HAProxy health-checks every gateway's
//! `/v2/health/ready` and retries, on another server, what a dead node
//! fails. Under steady load one node's host and gateways are SIGKILLed and
//! later restarted: the client sees only 200s with the right digit, and the
//! node takes its share of traffic again soon after its gateways are ready.
//!
//! Needs root for the namespaces; without them it says so on stderr (past
//! libtest's capture) and skips. Figures go to stderr the same way.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::netns::{self, NetNs};
use integration_tests::*;

/// Open-loop load through HAProxy, whatever the answers do.
const RATE_PER_SECOND: u64 = 80;
const LOAD: Duration = Duration::from_secs(16);
const KILL_AT: Duration = Duration::from_secs(4);
const RESTART_AT: Duration = Duration::from_secs(6);
/// Each node's gateways, on the node's own address.
const GATEWAY_PORTS: [u16; 2] = [8081, 8082];
/// How soon after the restarted node's gateways are ready it must serve again.
const BACK_WITHIN: Duration = Duration::from_secs(2);

/// A line on stderr that libtest does not capture: a skip, or the figures,
/// show in the run's output even when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "two_nodes: {line}");
}

/// One node: a namespace with a host and two gateways on its address.
struct Node {
    // Fields drop in declaration order: the processes before their namespace.
    host: Option<Process>,
    gateways: Vec<Process>,
    scratch: Scratch,
    ns: NetNs,
    label: char,
    starts: usize,
}

impl Node {
    fn new(ns: NetNs, label: char) -> Node {
        Node { host: None, gateways: Vec::new(), scratch: Scratch::new(), ns, label, starts: 0 }
    }

    /// HAProxy's name for gateway `i` of this node, which it puts in `X-Node`.
    fn server_name(&self, i: usize) -> String {
        format!("{}{}", self.label, i + 1)
    }

    fn spawn(&self, what: &str, program: &Path, args: &[String]) -> Process {
        let log = self.scratch.dir.path().join(format!("{what}.log"));
        let name = format!("node-{}:{what}", self.label);
        Process::spawn(&name, Path::new("ip"), &self.ns.exec_args(program, args), &[], log)
    }

    /// Starts the host and both gateways inside the namespace.
    fn start(&mut self) {
        let n = self.starts;
        self.starts += 1;
        let socket = self.scratch.socket().display().to_string();
        let model = digits_model().display().to_string();
        let host_args: Vec<String> =
            ["--socket", &socket, "--model", &model, "--device", "cpu", "--cpu-threads", "1"].map(String::from).into();
        self.host = Some(self.spawn(&format!("host-{n}"), &binary("model-host"), &host_args));
        self.gateways = (0..GATEWAY_PORTS.len())
            .map(|i| {
                let listen = format!("{}:{}", self.ns.addr, GATEWAY_PORTS[i]);
                let args: Vec<String> = ["--host-socket", &socket, "--listen", &listen, "--name", &self.server_name(i)]
                    .map(String::from)
                    .into();
                self.spawn(&format!("gateway{}-{n}", i + 1), &binary("gateway"), &args)
            })
            .collect();
    }

    /// SIGKILL: the host and both gateways, as a node that loses power:
    /// all three signalled before any is reaped, the gateways first. Killed
    /// and reaped one by one, host first, the second gateway outlived its
    /// host by a reap or two and answered 503 "host unavailable", a state a
    /// node that loses power never has (a host that dies alone is
    /// tests/host_down.rs's); HAProxy retries such a 503, but round robin
    /// now and then sent the retries to the node's other, equally hostless
    /// gateway, and 1 request in 1,280 failed (1 full suite in 5).
    fn kill(&mut self) {
        for gateway in &self.gateways {
            gateway.signal(nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(host) = &self.host {
            host.signal(nix::sys::signal::Signal::SIGKILL);
        }
        for gateway in &mut self.gateways {
            gateway.kill();
        }
        self.gateways.clear();
        if let Some(mut host) = self.host.take() {
            host.kill();
        }
    }

    /// Waits until both gateways answer 200 on /v2/health/ready.
    async fn wait_ready(&self, limit: Duration) {
        let client = reqwest::Client::new();
        for port in GATEWAY_PORTS {
            let url = format!("http://{}:{port}/v2/health/ready", self.ns.addr);
            let ready = eventually(limit, async || {
                client.get(&url).timeout(Duration::from_secs(1)).send().await.is_ok_and(|r| r.status() == 200)
            })
            .await;
            assert!(ready.is_some(), "node {} gateway on :{port} not ready within {limit:?}", self.label);
        }
    }
}

/// HAProxy as a Kubernetes Service would balance: round robin over the
/// gateways whose readiness answers 200, checked every 200 ms, down after
/// two failures, up after one success. A request that a dead server fails
/// (refused, reset, no answer, 503) goes again to another server.
fn haproxy_config(port: u16, stats: &Path, nodes: &[Node]) -> String {
    let mut servers = String::new();
    for node in nodes {
        for (i, gateway_port) in GATEWAY_PORTS.iter().enumerate() {
            servers.push_str(&format!("    server {} {}:{gateway_port} check\n", node.server_name(i), node.ns.addr));
        }
    }
    format!(
        "global
    maxconn 1000
    stats socket {stats} mode 600 level user
defaults
    mode http
    timeout connect 500ms
    timeout client 10s
    timeout server 5s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 502 503 504
    option http-buffer-request
frontend split_serve
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1
    http-response set-header X-Node %s
{servers}",
        stats = stats.display()
    )
}

/// HAProxy's `show stat`, one map per proxy or server line.
fn haproxy_stats(socket: &Path) -> Vec<HashMap<String, String>> {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return Vec::new();
    };
    let mut text = String::new();
    if stream.write_all(b"show stat\n").is_err() || stream.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let mut lines = text.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split(',').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| names.iter().zip(l.split(',')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .collect()
}

fn servers_up(socket: &Path) -> usize {
    haproxy_stats(socket)
        .iter()
        .filter(|s| s["svname"] != "BACKEND" && s["svname"] != "FRONTEND" && s["status"] == "UP")
        .count()
}

fn haproxy_binary() -> PathBuf {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("haproxy"))
}

/// One request of the load: when it was sent and answered, the server that
/// answered it, or what went wrong.
struct Outcome {
    sent: Duration,
    done: Duration,
    node: String,
    failure: Option<String>,
}

async fn one_request(client: &reqwest::Client, url: &str, bytes: Vec<u8>, label: &str) -> (String, Option<String>) {
    let response = match client.post(url).header("content-type", "image/png").body(bytes).send().await {
        Ok(r) => r,
        Err(e) => return (String::new(), Some(format!("no answer: {e}"))),
    };
    let status = response.status();
    let node = response.headers().get("x-node").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let failure = if status != 200 {
        Some(format!("{status} from {node}: {body}"))
    } else if body["predictions"][0]["label"].as_str() != Some(label) {
        Some(format!("wrong answer from {node}: want {label}, got {body}"))
    } else {
        None
    };
    (node, failure)
}

/// Sends RATE_PER_SECOND requests a second for LOAD, cycling through
/// `samples` (image, label); every outcome.
async fn steady_load(url: String, samples: Arc<Vec<(Vec<u8>, String)>>, started: Instant) -> Vec<Outcome> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
    let mut requests = Vec::new();
    for i in 0.. {
        tick.tick().await;
        if started.elapsed() >= LOAD {
            break;
        }
        let (client, url, samples, outcomes) = (client.clone(), url.clone(), samples.clone(), outcomes.clone());
        requests.push(tokio::spawn(async move {
            let (bytes, label) = &samples[i % samples.len()];
            let sent = started.elapsed();
            let (node, failure) = one_request(&client, &url, bytes.clone(), label).await;
            outcomes.lock().unwrap().push(Outcome { sent, done: started.elapsed(), node, failure });
        }));
    }
    for r in requests {
        r.await.expect("request task");
    }
    Arc::try_unwrap(outcomes).ok().expect("all requests done").into_inner().unwrap()
}

/// Held-out digits that the model gets right (so every answer under load
/// must be right), asked through the balancer with every node up.
async fn right_samples(url: &str) -> Vec<(Vec<u8>, String)> {
    let client = reqwest::Client::new();
    let mut right = Vec::new();
    for sample in testset("gray8").into_iter().take(30).chain(testset("inv28").into_iter().take(30)) {
        let (_, failure) = one_request(&client, url, sample.bytes.clone(), &sample.label).await;
        if failure.is_none() {
            right.push((sample.bytes, sample.label));
        }
    }
    assert!(right.len() >= 50, "only {} of 60 held-out digits right", right.len());
    right
}

/// Makes the two namespaces, or says why they cannot be made here.
fn make_nodes() -> Result<Vec<Node>, String> {
    let left = netns::sweep_stale();
    if !left.is_empty() {
        report(&format!("namespaces of other live runs: {left:?}"));
    }
    // A /30 per node, from the pid, so that runs side by side do not collide.
    let subnet = (std::process::id() % 100 * 2) as u8;
    let a = NetNs::create(0, subnet)?;
    let b = NetNs::create(1, subnet + 1).expect("the first namespace worked, the second must");
    Ok(vec![Node::new(a, 'a'), Node::new(b, 'b')])
}

/// When node a was killed, restarted, and ready again, from the load's start.
struct Marks {
    killed: Duration,
    restarted: Duration,
    ready: Duration,
}

/// Answers per second, per node, for the figures.
fn timeline(outcomes: &[Outcome]) -> String {
    let seconds = LOAD.as_secs() as usize + 2;
    let mut per_second = vec![(0, 0); seconds];
    for o in outcomes.iter().filter(|o| o.failure.is_none()) {
        let s = (o.done.as_secs() as usize).min(seconds - 1);
        if o.node.starts_with('a') {
            per_second[s].0 += 1;
        } else {
            per_second[s].1 += 1;
        }
    }
    per_second.iter().enumerate().map(|(s, (a, b))| format!("{s}s a{a}/b{b}")).collect::<Vec<_>>().join(" ")
}

/// Checks the outcomes against the marks; the figures, as one line.
fn check(outcomes: &[Outcome], marks: &Marks) -> String {
    // Each failure with when it was sent and answered, against the marks:
    // which phase (the kill, the restart) it belongs to.
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("sent {:?}, done {:?}: {f}", o.sent, o.done)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed (node a killed at {:?}, restarted at {:?}, ready at {:?}), first: {:?}",
        failures.len(),
        outcomes.len(),
        marks.killed,
        marks.restarted,
        marks.ready,
        &failures[..failures.len().min(5)]
    );
    let expected = RATE_PER_SECOND * LOAD.as_secs();
    assert!(outcomes.len() as u64 >= expected * 9 / 10, "the load fell behind: {} of {expected} sent", outcomes.len());

    // Node a serves again: its first answer to a request sent after its
    // gateways were ready, and its share once it is back.
    fn from_a(o: &&Outcome) -> bool {
        o.node.starts_with('a')
    }
    let first_back = outcomes.iter().filter(from_a).filter(|o| o.sent >= marks.ready).map(|o| o.done).min();
    let first_back =
        first_back.unwrap_or_else(|| panic!("node a never served after its restart; {}", timeline(outcomes)));
    let back_after = first_back.saturating_sub(marks.ready);
    assert!(back_after <= BACK_WITHIN, "node a served again {back_after:?} after ready; {}", timeline(outcomes));
    let settled: Vec<&Outcome> = outcomes.iter().filter(|o| o.sent >= marks.ready + BACK_WITHIN).collect();
    assert!(!settled.is_empty(), "node a was ready too late to see it settle: {:?} into the load", marks.ready);
    let share = settled.iter().copied().filter(from_a).count() as f64 / settled.len().max(1) as f64;
    // Round robin over four servers, two of them a's: half, once a is up.
    assert!(share >= 0.3, "node a took {:.0}% of the traffic after it was back; {}", share * 100.0, timeline(outcomes));
    let while_down = outcomes
        .iter()
        .filter(from_a)
        .filter(|o| o.sent > marks.killed + Duration::from_millis(50) && o.done < marks.restarted)
        .count();
    assert_eq!(while_down, 0, "answers attributed to node a while it was dead");

    let worst = outcomes.iter().map(|o| o.done - o.sent).max().unwrap_or_default();
    format!(
        "{} requests, 0 failed; node a killed at {:.1}s, restarted at {:.1}s, ready {:.2}s later, served again {:.0} ms after ready; \
         share after: {:.0}%; slowest answer {:.0} ms",
        outcomes.len(),
        marks.killed.as_secs_f64(),
        marks.restarted.as_secs_f64(),
        (marks.ready - marks.restarted).as_secs_f64(),
        back_after.as_secs_f64() * 1e3,
        share * 100.0,
        worst.as_secs_f64() * 1e3,
    )
}

/// HAProxy's own retries and redispatches, summed over the servers.
fn retries(stats: &[HashMap<String, String>]) -> (u64, u64) {
    let sum = |field: &str| {
        stats
            .iter()
            .filter(|s| s["svname"] != "BACKEND" && s["svname"] != "FRONTEND")
            .filter_map(|s| s[field].parse::<u64>().ok())
            .sum()
    };
    (sum("wretr"), sum("wredis"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_fails_no_request_and_serves_again_once_ready() {
    let mut nodes = match make_nodes() {
        Ok(nodes) => nodes,
        Err(why) => {
            report(&format!("SKIPPED: network namespaces cannot be made here (needs root): {why}"));
            return;
        }
    };
    for node in &mut nodes {
        node.start();
    }
    for node in &nodes {
        node.wait_ready(Duration::from_secs(60)).await;
    }

    let scratch = Scratch::new();
    let port = free_port();
    let stats = scratch.dir.path().join("haproxy.sock");
    let config = scratch.dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(port, &stats, &nodes)).expect("writing haproxy.cfg");
    let haproxy_args = ["-db", "-f", &config.display().to_string()].map(String::from);
    // Declared after the nodes, so dropped (killed) before them.
    let _haproxy =
        Process::spawn("haproxy", &haproxy_binary(), &haproxy_args, &[], scratch.dir.path().join("haproxy.log"));
    let all_up = eventually(Duration::from_secs(10), async || servers_up(&stats) == 4).await;
    assert!(all_up.is_some(), "HAProxy did not see 4 servers up: {:?}", haproxy_stats(&stats));

    let url = format!("http://127.0.0.1:{port}/v1/models/digits/predict");
    let samples = Arc::new(right_samples(&url).await);
    let started = Instant::now();
    let load = tokio::spawn(steady_load(url, samples, started));

    tokio::time::sleep(KILL_AT.saturating_sub(started.elapsed())).await;
    let killed = started.elapsed();
    nodes[0].kill();
    tokio::time::sleep(RESTART_AT.saturating_sub(started.elapsed())).await;
    let restarted = started.elapsed();
    nodes[0].start();
    nodes[0].wait_ready(Duration::from_secs(30)).await;
    let marks = Marks { killed, restarted, ready: started.elapsed() };

    let outcomes = load.await.expect("load task");
    let (retried, redispatched) = retries(&haproxy_stats(&stats));
    let figures = check(&outcomes, &marks);
    report(&figures);
    report(&format!(
        "HAProxy retried {retried} and redispatched {redispatched} requests; answers per second: {}",
        timeline(&outcomes)
    ));
}
