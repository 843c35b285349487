//! Compressed request and response bodies, through the real binaries:
//! gzip and deflate infer requests are answered as the plain one is; a
//! corrupt stream is a 400, an unknown encoding a 415; a gzip bomb is a
//! 413 at the decompressed body limit without the gateway's memory growing
//! by the bomb's size; `Accept-Encoding: gzip` gets a gzip answer.

use std::io::{Read, Write};

use integration_tests::{Gateway, Scratch, proc_status, testset};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The decompressed body limit these tests' gateway runs with.
const MAX_BODY: usize = 4 << 20;

/// One held-out digit as a PIXELS request, nested [1][32][32][1].
fn infer_body() -> Vec<u8> {
    let sample = testset("gray8").into_iter().next().expect("a test image");
    let image = image::load_from_memory(&sample.bytes).unwrap().into_luma8();
    let image = image::imageops::resize(&image, 32, 32, image::imageops::FilterType::Triangle);
    let nested: Vec<Vec<Vec<u8>>> = image.into_raw().chunks(32).map(|row| row.iter().map(|&p| vec![p]).collect()).collect();
    json!({"id": "z", "inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 32, 32, 1], "data": [nested]}]})
        .to_string()
        .into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn infer(client: &reqwest::Client, gateway: &Gateway, body: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client.post(gateway.url("/v2/models/digits/infer")).header("content-type", "application/json").body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("POST")
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn compressed_bodies_both_ways() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&["--max-body-bytes", &MAX_BODY.to_string()]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let body = infer_body();

    let (status, plain) = json_of(infer(&client, &gateway, body.clone(), &[]).await).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["outputs"][0]["name"], "PROBABILITIES", "{plain}");
    for (encoding, compressed) in [("gzip", gzip(&body)), ("deflate", deflate(&body))] {
        let (status, answer) = json_of(infer(&client, &gateway, compressed, &[("content-encoding", encoding)]).await).await;
        assert_eq!((status, &answer), (StatusCode::OK, &plain), "{encoding}");
    }

    // Asked for gzip: a gzip answer that decompresses to the same JSON.
    let response = infer(&client, &gateway, body.clone(), &[("accept-encoding", "gzip")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let bytes = response.bytes().await.unwrap();
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut text).expect("a gzip answer");
    assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), plain);

    let mut corrupt = gzip(&body);
    let middle = corrupt.len() / 2;
    corrupt[middle..].iter_mut().for_each(|b| *b ^= 0x5a);
    let (status, answer) = json_of(infer(&client, &gateway, corrupt, &[("content-encoding", "gzip")]).await).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("could not be decompressed"), "{answer}");

    for encoding in ["br", "zstd", "gzip, br"] {
        let (status, answer) = json_of(infer(&client, &gateway, body.clone(), &[("content-encoding", encoding)]).await).await;
        assert_eq!(status, 415, "{encoding}: {answer}");
        assert_eq!(answer["type"], "unsupported_content_encoding", "{answer}");
    }
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_body_limit() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&["--max-body-bytes", &MAX_BODY.to_string()]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let (status, answer) = json_of(infer(&client, &gateway, infer_body(), &[]).await).await;
    assert_eq!(status, 200, "{answer}");

    // 100 MB of zeros: about 100 KB on the wire.
    let bomb = gzip(&vec![0u8; 100 << 20]);
    assert!(bomb.len() < 1 << 20);
    let pid = gateway.process.pid();
    let before = proc_status(pid, "VmRSS");
    for _ in 0..3 {
        let (status, answer) = json_of(infer(&client, &gateway, bomb.clone(), &[("content-encoding", "gzip")]).await).await;
        assert_eq!(status, 413, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(&MAX_BODY.to_string()), "{answer}");
    }
    let grown_kb = proc_status(pid, "VmRSS").saturating_sub(before);
    println!("RSS grew by {grown_kb} kB");
    assert!(grown_kb < 32 * 1024, "the gateway's RSS grew by {grown_kb} kB on a 100 MB bomb");
}
