//! The metrics against a real Prometheus (Debian's package, installed by
//! scripts/setup): it scrapes two gateways in front of one host, labelled
//! as Kubernetes' pod discovery labels them (`namespace`, `pod`); under a
//! small load, every PromQL line that docs/operations.md shows and every
//! rule of the HPA's prometheus-adapter (deploy/kubernetes/prometheus-adapter/
//! values.yaml, its templates filled in as the adapter fills them) returns a
//! number through Prometheus's HTTP API. The queries are read from those
//! files, so a renamed metric or a broken query there fails here.
//!
//! The host has no HTTP port: its figures reach Prometheus through each
//! gateway's /metrics (fetched over the control socket at every scrape).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::Value;

/// The PromQL in docs/operations.md's ```promql blocks, comments left out.
fn documented_queries() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).expect("reading docs/operations.md");
    let mut queries = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim() {
            "```promql" => inside = true,
            "```" => inside = false,
            l if inside && !l.is_empty() && !l.starts_with('#') => queries.push(l.to_string()),
            _ => {}
        }
    }
    assert!(queries.len() >= 3, "docs/operations.md shows fewer PromQL lines than expected: {queries:?}");
    queries
}

/// The adapter's rules as the adapter runs them: each `metricsQuery` with
/// `<<.Series>>` (the series the rule's `seriesQuery` names),
/// `<<.LabelMatchers>>` (the pods of one namespace) and `<<.GroupBy>>`
/// (`pod`) filled in; and each `seriesQuery` as is.
fn adapter_queries(pods: &[&str]) -> Vec<String> {
    let path = root().join("deploy/kubernetes/prometheus-adapter/values.yaml");
    let json = std::process::Command::new(root().join(".venv/bin/python"))
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(&path)
        .output()
        .expect("running .venv/bin/python (scripts/setup makes it)");
    assert!(json.status.success(), "reading {}: {}", path.display(), String::from_utf8_lossy(&json.stderr));
    let values: Value = serde_json::from_slice(&json.stdout).expect("the adapter's values as JSON");
    let rules = values["rules"]["custom"].as_array().expect("rules.custom");
    let matchers = format!("namespace=\"test\",pod=~\"{}\"", pods.join("|"));
    let mut queries = Vec::new();
    for rule in rules {
        let series_query = rule["seriesQuery"].as_str().expect("seriesQuery");
        let series = series_query.split('{').next().expect("a series name").trim();
        let metrics_query = rule["metricsQuery"].as_str().expect("metricsQuery");
        queries.push(series_query.to_string());
        queries.push(metrics_query.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", &matchers).replace("<<.GroupBy>>", "pod"));
    }
    assert!(!queries.is_empty(), "no adapter rules in {}", path.display());
    queries
}

fn prometheus_binary() -> std::path::PathBuf {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("prometheus is missing: scripts/setup installs Debian's package")
}

/// Starts Prometheus scraping `gateways` (port, pod name) every second.
fn start_prometheus(scratch: &Scratch, gateways: &[(u16, &str)]) -> (Process, u16) {
    let targets: String = gateways
        .iter()
        .map(|(port, pod)| format!("      - targets: ['127.0.0.1:{port}']\n        labels: {{namespace: test, pod: {pod}}}\n"))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: splitserve\n    static_configs:\n{targets}"
    );
    let config_path = scratch.dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("writing prometheus.yml");
    let port = free_port();
    let args = [
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", scratch.dir.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    let process = Process::spawn("prometheus", &prometheus_binary(), &args, &[], scratch.dir.path().join("prometheus.log"));
    (process, port)
}

/// One instant query; the values of its result's series.
async fn query(client: &reqwest::Client, port: u16, promql: &str) -> Vec<f64> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let Ok(response) = client.get(url).query(&[("query", promql)]).send().await else { return Vec::new() };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_ne!(body["status"], "error", "Prometheus refused {promql}: {body}");
    body["data"]["result"]
        .as_array()
        .map(|series| series.iter().filter_map(|s| s["value"][1].as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateways_and_the_documented_queries_answer() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateways = [scratch.start_gateway(&[]), scratch.start_gateway(&[])];
    for gateway in &gateways {
        gateway.wait_ready().await;
    }
    let pods = ["gateway-a", "gateway-b"];
    let (mut prometheus, port) = start_prometheus(&scratch, &[(gateways[0].port, pods[0]), (gateways[1].port, pods[1])]);

    // A small steady load on both gateways while Prometheus scrapes.
    let stop = Arc::new(AtomicBool::new(false));
    let body = testset("gray8").remove(0).bytes;
    let load: Vec<_> = gateways
        .iter()
        .map(|g| {
            let (url, stop, body) = (g.predict_url(), stop.clone(), body.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Relaxed) {
                    let (status, _, _) = post_image(&client, &url, body.clone(), "image/png").await;
                    assert_eq!(status, 200);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    let client = reqwest::Client::new();
    let up = async || query(&client, port, "up{job=\"splitserve\"} == 1").await.len() == 2;
    let waited = eventually(Duration::from_secs(60), up).await;
    if waited.is_none() {
        prometheus.kill();
        panic!("Prometheus never saw both gateways up:\n{}", prometheus.log());
    }

    let mut queries = documented_queries();
    queries.extend(adapter_queries(&pods));
    for promql in &queries {
        // rate() needs two scrapes of a moving counter in its window: a
        // few seconds after the targets are up.
        let started = Instant::now();
        let values = loop {
            let values = query(&client, port, promql).await;
            if !values.is_empty() && values.iter().all(|v| v.is_finite()) {
                break values;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no finite value for {promql} within 30 s: {values:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        println!("{promql}\n  -> {values:?}");
    }

    // What the values say, where the load decides them: batches of at least
    // one image, nobody refused, a latency above zero.
    let batch = query(&client, port, "rate(splitserve_host_requests_total[5m]) / rate(splitserve_host_batches_total[5m])").await;
    assert!(batch.iter().all(|&b| b >= 1.0), "mean batch size below 1: {batch:?}");
    let p99 = query(&client, port, &queries[0]).await;
    assert!(p99.iter().all(|&s| s > 0.0 && s < 10.0), "p99 latency out of range: {p99:?}");

    stop.store(true, Relaxed);
    for task in load {
        task.await.expect("load task");
    }
}
