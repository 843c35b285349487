//! The host is down, comes up, is killed, and comes back: the gateway
//! answers 503 fast meanwhile and serves again without a restart of its own.

use std::time::{Duration, Instant};

use integration_tests::*;

/// Median time of `n` predict requests that must all be 503 with Retry-After.
async fn median_503(client: &reqwest::Client, gateway: &Gateway, bytes: &[u8], n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, headers, body) = post_image(client, &gateway.predict_url(), bytes.to_vec(), "image/png").await;
        times.push(started.elapsed());
        assert_eq!(status, 503, "{body}");
        assert!(headers.contains_key("retry-after"), "503 without Retry-After");
        assert_eq!(body["type"], "host_unavailable", "{body}");
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn gateway_survives_host_absence_and_restarts() {
    let scratch = Scratch::new();
    let client = reqwest::Client::new();
    let sample = &testset("gray8")[0];

    // No host yet: the gateway serves HTTP regardless.
    let spawned = Instant::now();
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_for("/health/live", Duration::from_secs(10)).await;
    println!("gateway live {:?} after spawn (no host)", spawned.elapsed());
    let ready = client.get(gateway.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["host_phase"], "disconnected", "{body}");
    let median = median_503(&client, &gateway, &sample.bytes, 21).await;
    println!("host never started: median 503 in {median:?}");
    assert!(median < Duration::from_millis(100), "503 took {median:?}");

    // The host arrives: no gateway restart needed.
    let mut host = scratch.start_host(&[]);
    let killed_pid = host.pid();
    gateway.wait_ready().await;
    let (status, _, body) = post_image(&client, &gateway.predict_url(), sample.bytes.clone(), "image/png").await;
    assert_eq!(status, 200, "{body}");

    // SIGKILL the host: fast 503s again, readiness drops.
    host.kill();
    let started = Instant::now();
    loop {
        let r = client.get(gateway.url("/health/ready")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still ready 1 s after the host died");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("ready turned 503 {:?} after the host was killed", started.elapsed());
    let median = median_503(&client, &gateway, &sample.bytes, 21).await;
    println!("host killed: median 503 in {median:?}");
    assert!(median < Duration::from_millis(100), "503 took {median:?}");

    // A new host (stale socket file left by the killed one is replaced).
    let host = scratch.start_host(&[]);
    gateway.wait_ready().await;
    let (status, _, body) = post_image(&client, &gateway.predict_url(), sample.bytes.clone(), "image/png").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(top_label(&body), sample.label);
    assert_eq!(segments_of(&[killed_pid, host.pid()]), Vec::<String>::new(), "shared memory left behind in /dev/shm");
}
