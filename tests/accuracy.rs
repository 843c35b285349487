//! The real model over the real HTTP path classifies held-out digits.

use futures::StreamExt;
use integration_tests::*;

/// Re-encodes a PNG sample as JPEG or WebP, the other formats clients send.
fn reencode(sample: Sample, format: image::ImageFormat) -> Sample {
    let img = image::load_from_memory(&sample.bytes).expect("decoding the PNG sample");
    let mut out = std::io::Cursor::new(Vec::new());
    img.to_rgb8().write_to(&mut out, format).expect("encoding");
    Sample { bytes: out.into_inner(), ..sample }
}

/// Sends every held-out image of one presentation, 8 at a time; the
/// fraction classified right.
async fn accuracy(gateway: &Gateway, presentation: &str) -> f64 {
    let client = reqwest::Client::new();
    let (samples, content_type) = match presentation {
        "rgb64-jpeg" => (testset("rgb64").into_iter().map(|s| reencode(s, image::ImageFormat::Jpeg)).collect(), "image/jpeg"),
        "rgb64-webp" => (testset("rgb64").into_iter().map(|s| reencode(s, image::ImageFormat::WebP)).collect(), "image/webp"),
        other => (testset(other), "image/png"),
    };
    let total = samples.len();
    let url = gateway.predict_url();
    let correct = futures::stream::iter(samples)
        .map(|s| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (status, _, body) = post_image(&client, &url, s.bytes, content_type).await;
                assert_eq!(status, 200, "{}: {body}", s.path.display());
                top_label(&body) == s.label
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    correct as f64 / total as f64
}

#[tokio::test]
async fn held_out_digits_are_classified_over_http() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    // gray8: the native 8x8 images; rgb64: dark ink on light, RGB;
    // inv28: 28x28; rgba48: black ink on a transparent background; and
    // rgb64 re-encoded as JPEG and as (lossless) WebP.
    for presentation in ["gray8", "rgb64", "inv28", "rgba48", "rgb64-jpeg", "rgb64-webp"] {
        let acc = accuracy(&gateway, presentation).await;
        println!("accuracy {presentation}: {acc:.4}");
        assert!(acc >= 0.95, "{presentation}: accuracy {acc:.4} is under 0.95");
    }
}
