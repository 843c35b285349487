//! Every kind of bad input gets its own status and a JSON error, and the
//! host stays healthy (same process, still ready, still right) throughout.

use std::io::Cursor;
use std::time::Duration;

use integration_tests::*;
use reqwest::StatusCode;

const MAX_BODY: usize = 200_000;

fn png_of(width: u32, height: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::GrayImage::new(width, height))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn jpeg_of(width: u32, height: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(width, height))
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A valid PNG header that claims `side` x `side` pixels, with one tiny IDAT.
fn png_claiming(side: u32) -> Vec<u8> {
    let mut bytes = png_of(1, 1);
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    // Fix the IHDR chunk's CRC (over its type and data) so only the size is a lie.
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[tokio::test]
async fn bad_inputs_get_their_status_and_the_host_stays_healthy() {
    let scratch = Scratch::new();
    let host = scratch.start_host(&[]);
    let max_body = MAX_BODY.to_string();
    let gateway = scratch.start_gateway(&["--max-body-bytes", &max_body, "--max-pixels", "40000000"]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let url = gateway.predict_url();
    let good = testset("gray8").remove(0);
    let png = png_of(40, 40);
    // Peak memory before any bad input: resident (VmHWM) and reserved (VmPeak).
    let gateway_pid = gateway.process.pid();
    let (hwm0, peak0) = (proc_status(gateway_pid, "VmHWM"), proc_status(gateway_pid, "VmPeak"));

    // One row per case reads best as a table: (case, url, body, content type, status, error type).
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, String, Vec<u8>, &str, StatusCode, &str)> = vec![
        ("garbage as PNG", url.clone(), b"this is not an image".to_vec(), "image/png", StatusCode::BAD_REQUEST, "invalid_image"),
        ("truncated PNG", url.clone(), png[..png.len() / 2].to_vec(), "image/png", StatusCode::BAD_REQUEST, "invalid_image"),
        ("truncated JPEG", url.clone(), { let j = jpeg_of(64, 64); j[..j.len() / 2].to_vec() }, "image/jpeg", StatusCode::BAD_REQUEST, "invalid_image"),
        ("corrupt WebP", url.clone(), b"RIFF\x10\0\0\0WEBPVP8 garbage!".to_vec(), "image/webp", StatusCode::BAD_REQUEST, "invalid_image"),
        ("empty body", url.clone(), Vec::new(), "image/png", StatusCode::BAD_REQUEST, "invalid_image"),
        ("PNG bytes labelled JPEG", url.clone(), png.clone(), "image/jpeg", StatusCode::BAD_REQUEST, "invalid_image"),
        ("50000x50000 header", url.clone(), png_claiming(50_000), "image/png", StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        ("body one byte over", url.clone(), vec![0u8; MAX_BODY + 1], "image/png", StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        ("text/plain", url.clone(), png.clone(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("raw pixels, wrong length", url.clone(), vec![0u8; 10], "application/x-pixels", StatusCode::BAD_REQUEST, "invalid_request"),
        ("GIF", url.clone(), b"GIF89a\x01\0\x01\0".to_vec(), "image/gif", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("octet-stream, not an image", url.clone(), b"hello".to_vec(), "application/octet-stream", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("multipart without a file", url.clone(), b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n".to_vec(), "multipart/form-data; boundary=b", StatusCode::BAD_REQUEST, "invalid_request"),
        ("unknown model", gateway.url("/v1/models/resnet/predict"), good.bytes.clone(), "image/png", StatusCode::NOT_FOUND, "model_not_found"),
        ("top_k=0", format!("{url}?top_k=0"), good.bytes.clone(), "image/png", StatusCode::BAD_REQUEST, "invalid_request"),
        ("top_k not a number", format!("{url}?top_k=many"), good.bytes.clone(), "image/png", StatusCode::BAD_REQUEST, "invalid_request"),
        ("deadline already passed", format!("{url}?timeout_ms=0"), good.bytes.clone(), "image/png", StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
    ];
    for (name, url, body, content_type, want_status, want_type) in cases {
        let (status, _, json) = post_image(&client, &url, body, content_type).await;
        assert_eq!(status, want_status, "{name}: {json}");
        assert_eq!(json["type"], want_type, "{name}: {json}");
        assert!(json["error"].as_str().is_some_and(|m| !m.is_empty()), "{name}: no message: {json}");
        println!("{name:<28} -> {status} {}", json["error"]);
    }

    // The 50000x50000 header (2.5 GB of pixels) was refused from the header:
    // nothing near its size was ever touched, nor even reserved.
    let (hwm1, peak1) = (proc_status(gateway_pid, "VmHWM"), proc_status(gateway_pid, "VmPeak"));
    println!("gateway peak memory over every bad input: resident {hwm0} -> {hwm1} KiB, reserved {peak0} -> {peak1} KiB");
    assert!(hwm1 < hwm0 + 32 * 1024, "peak resident memory grew by {} KiB", hwm1 - hwm0);
    assert!(peak1 < peak0 + 1024 * 1024, "peak reserved memory grew by {} KiB", peak1 - peak0);

    // The early 413 (refused from Content-Length) must reach the client
    // every time, not a reset connection: repeat it.
    for _ in 0..20 {
        let (status, _, _) = post_image(&client, &url, vec![0u8; MAX_BODY + 1], "image/png").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    // Over the limit with chunked encoding (no Content-Length): cut at the limit.
    let chunks = futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![0u8; 10_000])));
    let response = client
        .post(&url)
        .header("content-type", "image/png")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "chunked body over the limit");

    // The host never noticed: same process, ready, and still right.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = client.get(gateway.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let status = gateway.host_status().await;
    assert_eq!(status["pid"], host.pid());
    assert_eq!(status["model_loads"], 1);
    // Each request leases its slot while its body is still read: every bad
    // one gave it back. (A lease given up at its deadline is released once
    // the host's grant comes, which may follow the status asked above.)
    let released = eventually(Duration::from_secs(10), async || gateway.host_status().await["leased_slots"] == 0).await;
    assert!(released.is_some(), "slots still leased: {}", gateway.host_status().await);
    let (status, _, body) = post_image(&client, &url, good.bytes.clone(), "image/png").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(top_label(&body), good.label);
}
