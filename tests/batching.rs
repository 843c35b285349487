//! Dynamic batching across gateways, through the real binaries: the
//! host's `max_queue_delay_us` and `preferred_batch_sizes` decide which
//! requests share a forward pass, whichever gateway sent them; and raw
//! uint8 pixels (`application/x-pixels`) are answered like the image they
//! came from.

use std::path::Path;
use std::time::Duration;

use integration_tests::{Scratch, digits_model, model_toml_copy, post_image, testset, top_label, with_batching};

/// The digits model with a batching policy of the test's own.
fn model_with(dir: &Path, batching: &str) -> String {
    model_toml_copy(&digits_model(), dir, "batched.toml", |text| with_batching(text, batching))
}

/// Sends `n` requests at once, spread over `gateways`; their batch sizes, sorted.
async fn batch_sizes(gateways: &[integration_tests::Gateway], n: usize) -> Vec<u64> {
    let client = reqwest::Client::new();
    let samples = testset("gray8");
    let calls = (0..n).map(|i| {
        let (client, url) = (client.clone(), gateways[i % gateways.len()].predict_url());
        let (bytes, label) = (samples[i].bytes.clone(), samples[i].label.clone());
        async move {
            let (status, _, body) = post_image(&client, &url, bytes, "image/png").await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(top_label(&body), label, "an answer went to the wrong request");
            body["batch_size"].as_u64().unwrap()
        }
    });
    let mut sizes = futures::future::join_all(calls).await;
    sizes.sort_unstable();
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_delay_and_preferred_sizes_shape_batches_across_gateways() {
    let scratch = Scratch::new();
    // A long delay, so that on a slow machine the requests sent together
    // surely arrive within it; preferred size 4 runs without waiting.
    let model = model_with(scratch.dir.path(), "max_batch_size = 8\nmax_queue_delay_us = 1500000\npreferred_batch_sizes = [4]");
    let _host = scratch.start_host(&["--model", &model]);
    let gateways = [scratch.start_gateway(&[]), scratch.start_gateway(&[])];
    for g in &gateways {
        g.wait_ready().await;
    }

    // One request alone waits out the delay, then runs by itself.
    let started = std::time::Instant::now();
    assert_eq!(batch_sizes(&gateways, 1).await, vec![1]);
    let alone = started.elapsed();
    assert!(alone >= Duration::from_millis(1400), "a lone request ran after {alone:?}, before the 1.5 s delay");

    // Four from two gateways fill the preferred size: one batch, no waiting.
    let started = std::time::Instant::now();
    assert_eq!(batch_sizes(&gateways, 4).await, vec![4; 4]);
    let four = started.elapsed();
    assert!(four < Duration::from_millis(1400), "a preferred batch waited {four:?}");

    // Six: four go at once, the other two wait out the delay together.
    assert_eq!(batch_sizes(&gateways, 6).await, vec![2, 2, 4, 4, 4, 4]);

    // Nine: never more than max_batch_size (8) in one pass, and whatever
    // way they arrive, none waits out the delay alone (4+4+1 or 8+1 both
    // leave exactly one for the delay).
    let sizes = batch_sizes(&gateways, 9).await;
    assert!(sizes == [1, 4, 4, 4, 4, 4, 4, 4, 4] || sizes == [1, 8, 8, 8, 8, 8, 8, 8, 8], "{sizes:?}");
    println!("lone request {alone:?} (delay 1.5 s); preferred batch of 4 {four:?}");
}

#[tokio::test]
async fn raw_pixels_are_answered_like_the_image_they_came_from() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let url = gateway.predict_url();
    for sample in testset("gray8").into_iter().take(20) {
        // The client does the pre-processing (to 32x32 gray); the same
        // pixels as a PNG need none at the gateway, so the answers match.
        let image = image::load_from_memory(&sample.bytes).unwrap().into_luma8();
        let image = image::imageops::resize(&image, 32, 32, image::imageops::FilterType::Triangle);
        let mut png = std::io::Cursor::new(Vec::new());
        image.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let (status, _, from_pixels) = post_image(&client, &url, image.into_raw(), "application/x-pixels").await;
        assert_eq!(status, 200, "{from_pixels}");
        let (_, _, from_png) = post_image(&client, &url, png.into_inner(), "image/png").await;
        assert_eq!(from_pixels["predictions"], from_png["predictions"], "{}", sample.path.display());
    }
    let (status, _, body) = post_image(&client, &url, vec![0; 100], "application/x-pixels").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("must be 1024 bytes (32x32x1 uint8"), "{body}");
}
