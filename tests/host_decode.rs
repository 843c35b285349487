//! model.toml's `decode = "host"` (JPEGs decoded on the host's GPU with
//! nvJPEG) on a host without a GPU: the host says why it does not decode,
//! offers nothing in the handshake, and the gateway decodes every JPEG as
//! with `decode = "gateway"`. The GPU side is checked on a GPU by
//! scripts/gpu_host_decode (bench/host_decode_check.py).

use std::io::Cursor;
use std::path::Path;

use integration_tests::{Scratch, bytes_tensor, digits_model, infer_binary, model_toml_copy, post_image, testset, top_label};
use serde_json::json;

/// `model` with `decode = <place>` in its model.toml (a top-level key: it
/// goes right after `file`, before the first table).
fn with_decode(model: &Path, dir: &Path, place: &str) -> String {
    model_toml_copy(model, dir, "decode.toml", |text| text.replacen("\n[", &format!("\ndecode = {place:?}\n["), 1))
}

fn as_jpeg(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).expect("a test PNG").to_luma8();
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).encode_image(&image).expect("JPEG encoding");
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_gpu_says_why_and_the_gateway_decodes() {
    let scratch = Scratch::new();
    let model = with_decode(&digits_model(), scratch.dir.path(), "host");
    let host = scratch.start_host(&["--model", &model]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let log = host.log();
    assert!(log.contains("host-side JPEG decode off") && log.contains("nvJPEG needs a CUDA device"), "{log}");

    let client = reqwest::Client::new();
    let samples: Vec<_> = testset("gray8").into_iter().take(40).collect();
    let mut right = 0;
    for sample in &samples {
        let (status, _, body) = post_image(&client, &gateway.predict_url(), as_jpeg(&sample.bytes), "image/jpeg").await;
        assert_eq!(status, 200, "{body}");
        right += usize::from(top_label(&body) == sample.label);
    }
    // The digits model is 99.7% right on its test set; JPEG at quality 95
    // changes a few pixels by a few levels.
    assert!(right >= 36, "{right}/40 JPEGs rightly classified");

    // v2's IMAGE input takes the same path: decoded by the gateway, each
    // answer the same as v1's for the same file.
    let jpegs: Vec<Vec<u8>> = samples.iter().take(4).map(|s| as_jpeg(&s.bytes)).collect();
    let elements: Vec<&[u8]> = jpegs.iter().map(Vec::as_slice).collect();
    let data = bytes_tensor(&elements);
    let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [elements.len()],
        "parameters": {"binary_data_size": data.len()}}], "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 1}}]});
    let (status, v2) = infer_binary(&client, &gateway, &header, &data, None).await;
    assert_eq!(status, 200, "{v2}");
    for (i, jpeg) in jpegs.iter().enumerate() {
        let (_, _, v1) = post_image(&client, &gateway.predict_url(), jpeg.clone(), "image/jpeg").await;
        let best = v2["outputs"][0]["data"][i].as_str().unwrap_or_default();
        assert!(best.ends_with(&format!(":{}", top_label(&v1))), "element {i}: v2 {best}, v1 {v1}");
    }
    let status = gateway.host_status().await;
    assert_eq!(status["jpegs_decoded"], 0, "the host decoded nothing: {status}");
}

#[test]
fn a_tensor_model_cannot_ask_the_host_to_decode() {
    // Refused at startup, naming the field: a tensor model's inputs are
    // not images.
    let scratch = Scratch::new();
    let toml = with_decode(&integration_tests::root().join("models/detector"), scratch.dir.path(), "auto");
    let mut host = scratch.start_host(&["--model", &toml]);
    let code = host.wait_exit(std::time::Duration::from_secs(60));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
    assert!(host.log().contains("decode: auto decoding is for models that take images"), "{}", host.log());
}

/// A vision model may ask the host to decode too: on a host without a GPU
/// it says why it does not, and the gateway decodes its JPEGs (and maps
/// the boxes back) as with `decode = "gateway"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vision_model_on_a_host_without_a_gpu_has_its_jpegs_decoded_by_the_gateway() {
    let scratch = Scratch::new();
    let toml = with_decode(&integration_tests::root().join("models/shapes-detector"), scratch.dir.path(), "auto");
    let host = scratch.start_host(&["--model", &toml]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let log = host.log();
    assert!(log.contains("host-side JPEG decode off") && log.contains("nvJPEG needs a CUDA device"), "{log}");

    let scene = integration_tests::root().join("models/shapes-detector/testset/000_160x100.png");
    let png = std::fs::read(&scene).expect("the detector's test set (scripts/setup)");
    let image = image::load_from_memory(&png).expect("a test PNG").to_rgb8();
    let mut jpeg = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&image).expect("JPEG encoding");
    let client = reqwest::Client::new();
    let (status, _, answer) = post_image(&client, &gateway.url("/v1/models/shapes-detector/predict"), jpeg.into_inner(), "image/jpeg").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["image"], json!({"width": 160, "height": 100}), "{answer}");
    assert!(!answer["detections"].as_array().expect("detections").is_empty(), "{answer}");
    assert_eq!(gateway.host_status().await["jpegs_decoded"], 0);
}
