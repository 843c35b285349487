//! GET /metrics: the gateway's own figures and the host's, in Prometheus
//! text format; and a request id that reaches both processes' logs.

use std::time::Duration;

use integration_tests::*;

/// The value of `series` (`name` or `name{k="v",...}`): the first line of
/// that metric carrying every label given, whatever other labels it has
/// (host metrics also carry model, version and host).
fn value(metrics: &str, series: &str) -> f64 {
    let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or_default();
            metric == name && wanted.iter().all(|w| l.contains(w))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
}

#[tokio::test]
async fn metrics_cover_gateway_and_host_and_request_ids_cross_the_socket() {
    let scratch = Scratch::new();
    let host = scratch.start_host_with_env(&[], &[("RUST_LOG", "info,model_host=debug".into())]);
    // Debug logging gives each request a log span, so that every line about
    // it carries its id (at the default level only a failed request's does).
    let gateway = scratch.start_gateway_with_env(&[], &[("RUST_LOG", "info,gateway=debug,tower_http=debug".into())]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let sample = testset("gray8").remove(0);
    for _ in 0..3 {
        let (status, _, _) = post_image(&client, &gateway.predict_url(), sample.bytes.clone(), "image/png").await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = post_image(&client, &gateway.predict_url(), b"junk".to_vec(), "image/png").await;
    assert_eq!(status, 400);

    // A client's request id is echoed and logged by both processes.
    let response = client
        .post(gateway.predict_url())
        .header("content-type", "image/png")
        .header("x-request-id", "trace-me-4711")
        .body(sample.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-me-4711");
    // One without an id gets one made up.
    let response = client.get(gateway.url("/health/live")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));

    let text = client.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let predict = "route=\"/v1/models/{name}/predict\"";
    assert_eq!(value(&text, &format!("splitserve_gateway_http_requests_total{{{predict},status=\"200\"}}")), 4.0);
    assert_eq!(value(&text, &format!("splitserve_gateway_http_requests_total{{{predict},status=\"400\"}}")), 1.0);
    assert_eq!(value(&text, "splitserve_gateway_stage_seconds_count{stage=\"inference\"}"), 4.0);
    assert!(value(&text, "splitserve_gateway_http_request_body_bytes_count") >= 5.0);
    assert_eq!(value(&text, "splitserve_host_model_loads_total"), 1.0);
    assert_eq!(value(&text, "splitserve_host_requests_total"), 4.0);
    assert_eq!(value(&text, "splitserve_host_up"), 1.0);
    assert_eq!(value(&text, "splitserve_host_up{model=\"digits\",version=\"1\"}"), 1.0, "host metrics name their model");
    assert_eq!(value(&text, "splitserve_host_ready"), 1.0);
    assert_eq!(value(&text, "splitserve_host_batches_by_size_total{batch_size=\"1\"}"), 4.0);
    assert_eq!(value(&text, "splitserve_host_refused_total{reason=\"queue_full\"}"), 0.0);
    assert!(value(&text, "splitserve_host_startup_seconds{milestone=\"warmup_done\"}") > 0.0);
    assert!(value(&text, "splitserve_host_inference_seconds_total") > 0.0);
    // The host's memory: the digits model's weights (about 0.6 MB in fp32)
    // and a process that holds libtorch (well over 50 MB resident).
    let weights = value(&text, "splitserve_host_model_device_bytes");
    assert!((100_000.0..10_000_000.0).contains(&weights), "model bytes {weights}");
    assert!(value(&text, "splitserve_host_resident_memory_bytes") > 50e6);
    // A CPU host has no GPU: no nv_gpu_* series, and nothing failed for it.
    assert!(!text.contains("nv_gpu_"), "GPU series from a CPU host:\n{text}");
    assert!(!host.log().contains("NVML"), "a CPU host does not try NVML:\n{}", host.log());

    assert!(gateway.process.log().contains("trace-me-4711"), "gateway log lacks the id:\n{}", gateway.process.log());
    assert!(host.log().contains("trace-me-4711"), "host log lacks the id:\n{}", host.log());
}

/// A request whose client goes away mid-flight leaves the in-flight gauge.
/// The host here never answers, and the gateway's own timeout is far off,
/// so the only way out of the gauge is the handler's future being dropped
/// when hyper sees the client's connection close.
#[tokio::test]
async fn requests_dropped_mid_flight_leave_the_in_flight_gauge() {
    let scratch = Scratch::new();
    silent_host::start(&scratch.socket());
    let gateway = scratch.start_gateway(&["--request-timeout-ms", "600000"]);
    gateway.wait_ready().await;
    let scraper = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let in_flight = async || {
        let text = scraper.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
        // The scrape itself is one of them.
        value(&text, "splitserve_gateway_http_requests_in_flight") - 1.0
    };
    let sample = testset("gray8").remove(0);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (url, bytes) = (gateway.predict_url(), sample.bytes.clone());
        clients.push(tokio::spawn(async move { post_image(&reqwest::Client::new(), &url, bytes, "image/png").await }));
    }
    let limit = Duration::from_secs(30);
    assert!(eventually(limit, async || in_flight().await == 3.0).await.is_some(), "the 3 requests never showed as in flight");
    for client in &clients {
        client.abort();
    }
    let left = eventually(limit, async || in_flight().await == 0.0).await;
    assert!(left.is_some(), "{} requests still counted in flight after their clients left", in_flight().await);
}
