//! More requests at once than a gateway has slots at the host: they wait
//! at the gateway for a slot (up to their deadline, behind at most
//! `--max-waiting` others) instead of being refused. This is the burst a
//! gateway restarted on a held socket sees: everything that queued in the
//! kernel while no gateway accepted arrives at once (tests/zero_downtime.rs
//! saw it as 503 "all of this gateway's slots are in use").
//!
//! Deterministic: the host has 2 slots per gateway and a batch waits
//! BATCH_DELAY to fill (never filled: at most 2 requests are ever queued),
//! so the 2 slots stay taken for that long while all the requests arrive.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{Scratch, digits_model, model_toml_copy, post_image, testset, top_label, with_batching};

const BATCH_DELAY: Duration = Duration::from_millis(1500);
const REQUESTS: usize = 6;

/// The digits model, whose batches wait BATCH_DELAY to fill 4.
fn slow_model(dir: &Path) -> String {
    let batching = format!("max_batch_size = 4\nmax_queue_delay_us = {}", BATCH_DELAY.as_micros());
    model_toml_copy(&digits_model(), dir, "slow.toml", |text| with_batching(text, &batching))
}

/// Sends REQUESTS at once; (status, error type, whether the label is right, time taken) of each.
async fn burst(url: &str) -> Vec<(u16, String, bool, Duration)> {
    let client = reqwest::Client::new();
    let samples = testset("gray8");
    let calls = samples.into_iter().take(REQUESTS).map(|sample| {
        let (client, url) = (client.clone(), url.to_string());
        async move {
            let started = Instant::now();
            let (status, _, body) = post_image(&client, &url, sample.bytes, "image/png").await;
            let kind = body["type"].as_str().unwrap_or_default().to_string();
            let right = status == 200 && top_label(&body) == sample.label;
            (status.as_u16(), kind, right, started.elapsed())
        }
    });
    futures::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_the_slots_waits_for_them_and_past_max_waiting_is_refused_at_once() {
    let scratch = Scratch::new();
    let model = slow_model(scratch.dir.path());
    let _host = scratch.start_host(&["--model", &model, "--slots-per-gateway", "2"]);

    // Waiting allowed (the default): every request is answered, and right,
    // two per batch.
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let answers = burst(&gateway.predict_url()).await;
    for (status, kind, right, _) in &answers {
        assert_eq!((*status, kind.as_str()), (200, ""), "a request past the slots was refused: {answers:?}");
        assert!(right, "an answer went to the wrong request: {answers:?}");
    }
    let slowest = answers.iter().map(|a| a.3).max().unwrap();
    assert!(slowest >= BATCH_DELAY * 2, "{REQUESTS} requests through 2 slots took {slowest:?}: they cannot have waited");

    // At most one may wait: two hold the slots, one waits, the other three
    // are refused at once (before the first batch's delay is over).
    let strict = scratch.start_gateway(&["--max-waiting", "1"]);
    strict.wait_ready().await;
    let answers = burst(&strict.predict_url()).await;
    let refused: Vec<_> = answers.iter().filter(|a| a.0 != 200).collect();
    assert_eq!(refused.len(), REQUESTS - 3, "{answers:?}");
    for (status, kind, _, took) in refused {
        assert_eq!((*status, kind.as_str()), (503, "overloaded"), "{answers:?}");
        assert!(*took < BATCH_DELAY, "a refusal took {took:?}: it waited");
    }
    assert!(answers.iter().filter(|a| a.0 == 200).all(|a| a.2), "an answer went to the wrong request: {answers:?}");
}

/// A request leases its slot while its body is still arriving (the lease's
/// round trip to the host then overlaps the upload, not follows it), and
/// the slot is written and used once the body is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_leased_while_the_body_is_still_arriving() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let sample = testset("gray8").remove(0);
    let (half, rest) = sample.bytes.split_at(sample.bytes.len() / 2);
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(half.to_vec())).unwrap();
    let body = reqwest::Body::wrap_stream(rx);
    let request = reqwest::Client::new().post(gateway.predict_url()).header("content-type", "image/png").body(body).send();
    let answer = tokio::spawn(request);

    // Half the body is in: the slot is already the request's.
    let leased = integration_tests::eventually(Duration::from_secs(10), async || gateway.host_status().await["leased_slots"] == 1).await;
    assert!(leased.is_some(), "no slot leased while the body arrived: {}", gateway.host_status().await);
    assert!(!answer.is_finished());

    tx.unbounded_send(Ok(rest.to_vec())).unwrap();
    drop(tx);
    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(top_label(&body), sample.label, "{body}");
    assert_eq!(gateway.host_status().await["leased_slots"], 0);
}

/// Overload is refused before the body is read: with this gateway's slots
/// all leased (two requests whose bodies are still arriving) and no
/// waiting room, a request that has sent only its headers gets the 503
/// and its `Retry-After` at once; a gateway that read the body first would
/// wait for a body that never comes. For a classifier and a vision model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_gateway_refuses_before_reading_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (model, name) in [(digits_model(), "digits"), (integration_tests::root().join("models/shapes-detector"), "shapes-detector")] {
        let scratch = Scratch::new();
        let _host = scratch.start_host(&["--model", model.to_str().unwrap(), "--slots-per-gateway", "2"]);
        let gateway = scratch.start_gateway(&["--max-waiting", "0"]);
        gateway.wait_ready().await;
        let url = gateway.url(&format!("/v1/models/{name}/predict"));
        // Two requests hold both slots: half a body each, the rest never sent.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
            tx.unbounded_send(Ok(vec![0x89, b'P', b'N', b'G'])).unwrap();
            let request = reqwest::Client::new().post(&url).header("content-type", "image/png").body(reqwest::Body::wrap_stream(rx)).send();
            held.push((tx, tokio::spawn(request)));
        }
        let leased = integration_tests::eventually(Duration::from_secs(20), async || gateway.host_status().await["leased_slots"] == 2).await;
        assert!(leased.is_some(), "{name}: the two held requests did not lease both slots: {}", gateway.host_status().await);

        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port)).await.unwrap();
        let head = format!("POST /v1/models/{name}/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer)).await.expect("no answer to the headers").unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_lowercase();
        assert!(answer.starts_with("http/1.1 503"), "{name}: {answer}");
        assert!(answer.contains("retry-after:") && answer.contains("overloaded"), "{name}: {answer}");
        drop(held);
    }
}
