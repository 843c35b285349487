//! Tensor models over the Open Inference Protocol, through the real
//! binaries: the two example models made by scripts/make_tensor_models.py
//! (`dtypes`: one input and output of every datatype, a tuple output;
//! `detector`: two inputs, four outputs as a dict), compared with the
//! outputs the script computed in-process with `torch.jit.load`
//! (reference.json), as JSON and as binary data, and each malformed
//! request answered with a 400 that names the problem, the host unharmed;
//! and an encoded PNG as BYTES for the detector's UINT8 image input.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use integration_tests::{Gateway, Process, Scratch, encode, root};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

fn model_dir(name: &str) -> PathBuf {
    let dir = root().join("models").join(name);
    assert!(dir.join("model.pt").exists(), "{} is missing: run scripts/setup first", dir.display());
    dir
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(model_dir(name).join("reference.json")).expect("reading reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// A host serving `model` and one gateway, ready.
async fn serve(scratch: &Scratch, model: &str) -> (Process, Gateway) {
    let host = scratch.start_host(&["--model", &model_dir(model).display().to_string()]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_for("/v2/health/ready", Duration::from_secs(120)).await;
    (host, gateway)
}

/// The model's signature from its metadata: (name, datatype, dims without batch).
async fn signature(client: &reqwest::Client, gateway: &Gateway, model: &str) -> (Vec<(String, String, Vec<i64>)>, Vec<(String, String, Vec<i64>)>) {
    let meta: Value = client.get(gateway.url(&format!("/v2/models/{model}"))).send().await.unwrap().json().await.unwrap();
    let list = |key: &str| {
        meta[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {meta}"))
            .iter()
            .map(|t| {
                let shape: Vec<i64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
                assert_eq!(shape[0], -1, "batch dimension first: {t}");
                (t["name"].as_str().unwrap().to_string(), t["datatype"].as_str().unwrap().to_string(), shape[1..].to_vec())
            })
            .collect()
    };
    (list("inputs"), list("outputs"))
}

/// Items' values for one tensor, concatenated (the batch's data, row-major).
fn batch_values(items: &[Value], side: &str, name: &str) -> Vec<Value> {
    items.iter().flat_map(|item| item[side][name].as_array().unwrap_or_else(|| panic!("{side}.{name} in reference")).clone()).collect()
}

/// Checks `got` against the reference values: integers and booleans
/// exactly, floats within `tolerance` (0: exactly).
fn assert_values(name: &str, got: &[Value], want: &[Value], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{name}: element count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g.as_f64(), w.as_f64()) {
            (Some(g), Some(w)) if w.fract() != 0.0 || g.fract() != 0.0 || tolerance > 0.0 => {
                assert!((g - w).abs() <= tolerance, "{name}[{i}]: got {g}, reference {w}");
            }
            _ => assert_eq!(g, w, "{name}[{i}]"),
        }
    }
}

fn tolerance(model: &str, datatype: &str) -> f64 {
    // The suite runs the host on the CPU: floats within 4e-6 of the
    // reference, whatever the batching. (On CUDA, TF32 convolutions move them
    // by up to 1.3e-3, docs/gpu.md; every label and threshold decision is
    // more than 0.1 away, so those stay exact.)
    if model == "detector" && datatype == "FP32" { 1e-4 } else { 0.0 }
}

/// A JSON request with every input of these reference items.
fn json_request(inputs: &[(String, String, Vec<i64>)], items: &[Value]) -> Value {
    let tensors: Vec<Value> = inputs
        .iter()
        .map(|(name, datatype, dims)| {
            let shape: Vec<i64> = std::iter::once(items.len() as i64).chain(dims.iter().copied()).collect();
            json!({"name": name, "datatype": datatype, "shape": shape, "data": batch_values(items, "inputs", name)})
        })
        .collect();
    json!({"id": "t-1", "inputs": tensors})
}

async fn post(client: &reqwest::Client, gateway: &Gateway, model: &str, body: Vec<u8>, header: Option<usize>) -> reqwest::Response {
    let mut request = client.post(gateway.url(&format!("/v2/models/{model}/infer"))).body(body);
    if let Some(header) = header {
        request = request.header("Inference-Header-Content-Length", header.to_string());
    }
    request.send().await.expect("POST")
}

/// Runs every reference item in one batch, JSON in and out, then binary in
/// and out, and compares each output with the reference.
async fn matches_reference(model: &str) {
    let scratch = Scratch::new();
    let (_host, gateway) = serve(&scratch, model).await;
    let client = reqwest::Client::new();
    let (inputs, outputs) = signature(&client, &gateway, model).await;
    let reference = reference(model);
    let items = reference["items"].as_array().unwrap().clone();
    let n = items.len();

    let response = post(&client, &gateway, model, json_request(&inputs, &items).to_string().into_bytes(), None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["id"].as_str(), body["model_name"].as_str()), (Some("t-1"), Some(model)), "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), outputs.len(), "every output when none is named");
    for (out, (name, datatype, dims)) in body["outputs"].as_array().unwrap().iter().zip(&outputs) {
        let shape: Vec<i64> = std::iter::once(n as i64).chain(dims.iter().copied()).collect();
        assert_eq!((&out["name"], &out["datatype"], &out["shape"]), (&json!(name), &json!(datatype), &json!(shape)));
        let got = out["data"].as_array().unwrap_or_else(|| panic!("{name} has no data: {out}"));
        assert_values(name, got, &batch_values(&items, "outputs", name), tolerance(model, datatype));
    }

    // Binary in (every input as raw bytes), binary out (every output).
    let mut header_inputs = Vec::new();
    let mut data = Vec::new();
    for (name, datatype, dims) in &inputs {
        let raw = encode(datatype, &batch_values(&items, "inputs", name));
        let shape: Vec<i64> = std::iter::once(n as i64).chain(dims.iter().copied()).collect();
        header_inputs.push(json!({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": raw.len()}}));
        data.extend(raw);
    }
    let header = json!({"inputs": header_inputs, "parameters": {"binary_data_output": true}}).to_string();
    let response = post(&client, &gateway, model, [header.as_bytes(), &data].concat(), Some(header.len())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[reqwest::header::CONTENT_TYPE], "application/octet-stream");
    let split: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let body = response.bytes().await.unwrap();
    let json: Value = serde_json::from_slice(&body[..split]).unwrap();
    let mut rest = &body[split..];
    for (out, (name, datatype, _)) in json["outputs"].as_array().unwrap().iter().zip(&outputs) {
        let size = out["parameters"]["binary_data_size"].as_u64().unwrap_or_else(|| panic!("{out}")) as usize;
        let (raw, tail) = rest.split_at(size);
        rest = tail;
        let want = batch_values(&items, "outputs", name);
        if tolerance(model, datatype) == 0.0 {
            assert_eq!(raw, encode(datatype, &want), "{name}: binary output differs from the reference");
        } else {
            let got: Vec<Value> = raw.chunks_exact(4).map(|b| json!(f32::from_le_bytes(b.try_into().unwrap()))).collect();
            assert_values(name, &got, &want, tolerance(model, datatype));
        }
    }
    assert!(rest.is_empty(), "{} bytes after the last output", rest.len());
}

#[tokio::test]
async fn every_datatype_round_trips_exactly() {
    matches_reference("dtypes").await;
}

#[tokio::test]
async fn the_detector_answers_as_the_in_process_model() {
    matches_reference("detector").await;
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or_else(|| panic!("no error in {body}")).to_string())
}

#[tokio::test]
async fn metadata_config_outputs_and_malformed_requests() {
    let scratch = Scratch::new();
    let (host, gateway) = serve(&scratch, "detector").await;
    let client = reqwest::Client::new();

    let meta: Value = client.get(gateway.url("/v2/models/detector")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["inputs"], json!([
        {"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]},
        {"name": "score_threshold", "datatype": "FP32", "shape": [-1, 1]},
    ]));
    assert_eq!(meta["outputs"][3], json!({"name": "keep", "datatype": "BOOL", "shape": [-1, 8]}));
    let config: Value = client.get(gateway.url("/v2/models/detector/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["max_batch_size"], 8);
    assert_eq!(config["input"][0], json!({"name": "image", "data_type": "TYPE_UINT8", "dims": [32, 32, 3]}));
    assert_eq!(config["output"][2], json!({"name": "labels", "data_type": "TYPE_INT64", "dims": [8]}));

    let (inputs, _) = signature(&client, &gateway, "detector").await;
    let items = reference("detector")["items"].as_array().unwrap().clone();
    let good = json_request(&inputs, &items[..1]);

    // Requested outputs only, in the order asked; classification on scores.
    let mut body = good.clone();
    body["outputs"] = json!([{"name": "labels"}, {"name": "scores", "parameters": {"classification": 2}}]);
    let response = post(&client, &gateway, "detector", body.to_string().into_bytes(), None).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let outputs = answer["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["data"], items[0]["outputs"]["labels"]);
    assert_eq!((&outputs[1]["datatype"], &outputs[1]["shape"]), (&json!("BYTES"), &json!([1, 2])));
    let scores: Vec<f64> = items[0]["outputs"]["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
    let first = outputs[1]["data"][0].as_str().unwrap();
    assert!(first.ends_with(&format!(":{best}")), "{first} should be index {best}");

    let with_input = |index: usize, change: &dyn Fn(&mut Map<String, Value>)| {
        let mut body = good.clone();
        change(body["inputs"][index].as_object_mut().unwrap());
        body.to_string().into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, Option<usize>, &str)> = vec![
        ("wrong datatype", with_input(1, &|t| { t.insert("datatype".into(), json!("FP64")); }), None, "score_threshold.datatype is FP64; expected FP32"),
        ("shape against data", with_input(1, &|t| { t.insert("data".into(), json!([0.5, 0.6])); }), None, "has 2 elements; shape [1, 1] needs 1"),
        ("batch sizes differ", with_input(1, &|t| { t.insert("shape".into(), json!([2, 1])); }), None, "batch size 2 but an earlier input has 1"),
        ("shape against model", with_input(0, &|t| { t.insert("shape".into(), json!([1, 16, 64, 3])); }), None, "image.shape is [1, 16, 64, 3]; expected [n, 32, 32, 3]"),
        ("batch over max", with_input(1, &|t| { t.insert("shape".into(), json!([9, 1])); }), None, "with n from 1 to 8"),
        ("unknown datatype", with_input(1, &|t| { t.insert("datatype".into(), json!("FLOAT")); }), None, "unknown datatype \"FLOAT\""),
        ("bad element", with_input(1, &|t| { t.insert("data".into(), json!(["x"])); }), None, "FP32 elements are numbers"),
        ("missing input", json!({"inputs": [good["inputs"][0]]}).to_string().into_bytes(), None, "input \"score_threshold\" is missing"),
        ("unknown output", { let mut b = good.clone(); b["outputs"] = json!([{"name": "masks"}]); b.to_string().into_bytes() }, None, "unknown output \"masks\""),
        ("header past body", b"{}".to_vec(), Some(100), "Inference-Header-Content-Length is 100 but the body has only 2 bytes"),
        ("binary size", with_input(1, &|t| { t.remove("data"); t.insert("parameters".into(), json!({"binary_data_size": 8})); }), None, "binary_data_size of score_threshold is 8 but only 0"),
        ("not JSON", b"{".to_vec(), None, "not an inference request"),
    ];
    for (case, body, header, expected) in cases {
        let (status, error) = error_of(post(&client, &gateway, "detector", body, header).await).await;
        assert_eq!(status, 400, "{case}: {error}");
        assert!(error.contains(expected), "{case}: {error:?} should contain {expected:?}");
    }
    // Binary data of the wrong size for the shape.
    let header = json!({"inputs": [good["inputs"][0], {"name": "score_threshold", "datatype": "FP32", "shape": [1, 1],
        "parameters": {"binary_data_size": 2}}]}).to_string();
    let response = post(&client, &gateway, "detector", [header.as_bytes(), b"\0\0"].concat(), Some(header.len())).await;
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400);
    assert!(error.contains("score_threshold has 2 bytes of data; shape [1, 1] of FP32 needs 4"), "{error}");

    // The UINT8 [32, 32, 3] image input also takes an encoded image as
    // BYTES: example.png is item 0's pixels, so the answer is item 0's.
    let png = std::fs::read(root().join("models/detector/example.png")).expect("models/detector/example.png");
    let element = [&(png.len() as u32).to_le_bytes()[..], &png].concat();
    let header = json!({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": element.len()}},
        good["inputs"][1],
    ]}).to_string();
    let response = post(&client, &gateway, "detector", [header.as_bytes(), &element].concat(), Some(header.len())).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    for out in answer["outputs"].as_array().unwrap() {
        let name = out["name"].as_str().unwrap();
        let tolerance = if out["datatype"] == "FP32" { 1e-4 } else { 0.0 };
        assert_values(name, out["data"].as_array().unwrap(), items[0]["outputs"][name].as_array().unwrap(), tolerance);
    }
    let json_image = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["png"]}, good["inputs"][1]]});
    let (status, error) = error_of(post(&client, &gateway, "detector", json_image.to_string().into_bytes(), None).await).await;
    assert_eq!(status, 400);
    assert!(error.contains("image as BYTES takes encoded images as raw bytes"), "{error}");

    // v1 is for image classifiers: an image sent to a tensor model is
    // refused, pointing at v2; its v1 description lists the tensors.
    let png = std::fs::read(root().join("models/digits/testset/gray8").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    let response = client.post(gateway.url("/v1/models/detector/predict")).header("content-type", "image/png").body(png).send().await.unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400);
    assert!(error.contains("detector is a tensor model") && error.contains("/v2/models/detector/infer"), "{error}");
    let v1: Value = client.get(gateway.url("/v1/models/detector")).send().await.unwrap().json().await.unwrap();
    assert_eq!((&v1["kind"], &v1["inputs"][1]), (&json!("tensors"), &json!({"name": "score_threshold", "datatype": "FP32", "dims": [1]})));

    // The host is unharmed: the same process answers a good request.
    let response = post(&client, &gateway, "detector", good.to_string().into_bytes(), None).await;
    assert_eq!(response.status(), 200);
    let status = gateway.host_status().await;
    assert_eq!(status["pid"], host.pid(), "{status}");
    assert_eq!(status["model_loads"], 1, "{status}");
}

/// Many requests at once over two gateways, each with its own values: every
/// answer is its own request's (the outputs are read back from the slot
/// while the host's answer is handled, before the slot can be reused).
#[tokio::test]
async fn concurrent_requests_get_their_own_outputs() {
    let scratch = Scratch::new();
    let (_host, first) = serve(&scratch, "dtypes").await;
    let second = scratch.start_gateway(&[]);
    second.wait_for("/v2/health/ready", Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let (inputs, _) = signature(&client, &first, "dtypes").await;
    let template = json_request(&inputs, &reference("dtypes")["items"].as_array().unwrap()[..1]);
    let calls = (0..400i64).map(|i| {
        let mut body = template.clone();
        for t in body["inputs"].as_array_mut().unwrap() {
            match t["name"].as_str().unwrap() {
                "int64" => t["data"] = json!([i, -i, i * 1_000_000_007, 7]),
                "fp64" => t["data"] = json!([i as f64 + 0.25, -(i as f64), 1.5, 0.0]),
                _ => {}
            }
        }
        body["outputs"] = json!([{"name": "int64_out"}, {"name": "fp64_out"}]);
        let gateway = if i % 2 == 0 { &first } else { &second };
        let (client, url) = (client.clone(), gateway.url("/v2/models/dtypes/infer"));
        async move {
            let response = client.post(url).body(body.to_string()).send().await.expect("POST");
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["outputs"][0]["data"], json!([i + 1, -i + 1, i * 1_000_000_007 + 1, 8]), "request {i}");
            assert_eq!(answer["outputs"][1]["data"], json!([2.0 * (i as f64 + 0.25), -2.0 * i as f64, 3.0, 0.0]), "request {i}");
        }
    });
    // 400 requests, at most 64 in flight.
    futures::stream::iter(calls).buffer_unordered(64).collect::<Vec<()>>().await;
}
