//! A gateway killed with SIGKILL and replaced: the host keeps its model
//! (loaded once), frees the dead gateway's slots, and the new gateway's
//! first request succeeds.

use std::time::{Duration, Instant};

use futures::StreamExt;
use integration_tests::*;

#[tokio::test]
async fn killed_gateway_is_replaced_without_reloading_the_model() {
    let scratch = Scratch::new();
    let host = scratch.start_host(&[]);
    let mut first = scratch.start_gateway(&[]);
    first.wait_ready().await;
    let client = reqwest::Client::new();
    let samples = testset("gray8");

    // Requests in flight while it dies.
    let url = first.predict_url();
    let bodies: Vec<Vec<u8>> = samples.iter().cycle().take(400).map(|s| s.bytes.clone()).collect();
    let load_client = client.clone();
    let load = futures::stream::iter(bodies)
        .map(move |bytes| {
            let client = load_client.clone();
            let url = url.clone();
            async move { client.post(&url).header("content-type", "image/png").body(bytes).send().await.is_ok() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let load = tokio::spawn(load);
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.process.kill();
    let _ = load.await;

    let started = Instant::now();
    let second = scratch.start_gateway(&[]);
    second.wait_for("/health/live", Duration::from_secs(10)).await;
    println!("new gateway answered /health/live {:?} after spawn", started.elapsed());
    // The first request to the new gateway, once it has its host link.
    second.wait_ready().await;
    let (status, _, body) = post_image(&client, &second.predict_url(), samples[0].bytes.clone(), "image/png").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(top_label(&body), samples[0].label);
    println!("new gateway's first prediction {:?} after spawn", started.elapsed());

    // Loaded once, by the same host process; the dead gateway's slots are back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = second.host_status().await;
        assert_eq!(status["model_loads"], 1, "{status}");
        assert_eq!(status["pid"], host.pid(), "{status}");
        if status["connections"] == 1 && status["leased_slots"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the dead gateway's connection or slots were not released: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host.log().matches("model loaded").count(), 1, "the host loaded the model more than once");
}
