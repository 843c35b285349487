//! Inference through registered system shared-memory regions, through the
//! real binaries, with the `dtypes` tensor model (exact outputs): every
//! input read from one region and every output written into another at
//! its offset, none of it crossing HTTP; each mistake (unknown region,
//! window past the region, offset overflow, data size against the shape,
//! output region too small, data given twice) a 400 naming it, before the
//! model runs; and a region in use by an inference cannot be unregistered
//! until that inference is answered.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{Gateway, Scratch, encode, model_toml_copy, root, with_batching};
use reqwest::StatusCode;
use serde_json::{Value, json};
use protocol::shm::mapping::Mapping;

/// A client's shm object of `size` bytes; removed when dropped.
fn client_object(size: usize) -> (Mapping, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let key = format!("/split-test-infer.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    (Mapping::create(&key, size).expect("creating a shm object"), key)
}

/// The dtypes model with every lone request held 1.5 s by the batcher, so
/// that the test can act while an inference uses a region.
fn slow_dtypes(dir: &Path) -> String {
    let model = root().join("models/dtypes");
    assert!(model.join("model.pt").exists(), "models/dtypes is missing: run scripts/setup first");
    model_toml_copy(&model, dir, "slow-dtypes.toml", |text| with_batching(text, "max_batch_size = 4\nmax_queue_delay_us = 1500000"))
}

async fn post(client: &reqwest::Client, gateway: &Gateway, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = client.post(gateway.url(path)).body(body.to_string()).send().await.expect("POST");
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}")).to_string()
}

#[tokio::test]
async fn tensors_travel_through_client_regions_and_in_use_regions_stay() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&["--model", &slow_dtypes(scratch.dir.path())]);
    let gateway = scratch.start_gateway(&["--system-shared-memory"]);
    gateway.wait_for("/v2/health/ready", Duration::from_secs(120)).await;
    let client = reqwest::Client::new();

    let meta: Value = client.get(gateway.url("/v2/models/dtypes")).send().await.unwrap().json().await.unwrap();
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(root().join("models/dtypes/reference.json")).unwrap()).unwrap();
    let item = &reference["items"][1];
    let tensors = |side: &str, key: &str| -> Vec<(String, String, Vec<u8>)> {
        meta[side]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let (name, datatype) = (t["name"].as_str().unwrap(), t["datatype"].as_str().unwrap());
                (name.to_string(), datatype.to_string(), encode(datatype, item[key][name].as_array().unwrap()))
            })
            .collect()
    };
    let (inputs, outputs) = (tensors("inputs", "inputs"), tensors("outputs", "outputs"));
    let in_size: usize = inputs.iter().map(|(_, _, b)| b.len()).sum();
    let out_size: usize = outputs.iter().map(|(_, _, b)| b.len()).sum();

    // The client's objects: inputs back to back at 16 bytes into "in".
    let (input_object, in_key) = client_object(16 + in_size);
    let (output_object, out_key) = client_object(out_size);
    let mut at = 16;
    for (_, _, bytes) in &inputs {
        input_object.copy_in(at, bytes).expect("inside the object");
        at += bytes.len();
    }
    for (name, key, offset, size) in [("in", &in_key, 16, in_size), ("out", &out_key, 0, out_size)] {
        let body = json!({"key": key, "offset": offset, "byte_size": size});
        let (status, body) = post(&client, &gateway, &format!("/v2/systemsharedmemory/region/{name}/register"), &body).await;
        assert_eq!(status, 200, "{body}");
    }

    // The request: each input at its offset in "in", each output at its offset in "out".
    let request = |change: &dyn Fn(&mut Value)| {
        let (mut offset, mut described) = (0, Vec::new());
        for (name, datatype, bytes) in &inputs {
            described.push(json!({"name": name, "datatype": datatype, "shape": [1, 4], "parameters":
                {"shared_memory_region": "in", "shared_memory_offset": offset, "shared_memory_byte_size": bytes.len()}}));
            offset += bytes.len();
        }
        let (mut offset, mut wanted) = (0, Vec::new());
        for (name, _, bytes) in &outputs {
            wanted.push(json!({"name": name, "parameters":
                {"shared_memory_region": "out", "shared_memory_offset": offset, "shared_memory_byte_size": bytes.len()}}));
            offset += bytes.len();
        }
        let mut body = json!({"inputs": described, "outputs": wanted});
        change(&mut body);
        body
    };

    let infer = "/v2/models/dtypes/infer";
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown region", request(&|b| b["inputs"][0]["parameters"]["shared_memory_region"] = json!("nope")), "nope"),
        ("window past the region", request(&|b| b["inputs"][9]["parameters"]["shared_memory_byte_size"] = json!(in_size)), "in"),
        ("offset overflow", request(&|b| b["inputs"][0]["parameters"]["shared_memory_offset"] = json!(u64::MAX)), "in"),
        ("size against shape", request(&|b| b["inputs"][0]["parameters"]["shared_memory_byte_size"] = json!(3)), "bool has 3 bytes of data; shape [1, 4] of BOOL needs 4"),
        ("output region too small", request(&|b| b["outputs"][9]["parameters"]["shared_memory_byte_size"] = json!(8)), "fp64_out needs 32 bytes but its shared_memory_byte_size is 8"),
        ("data twice", request(&|b| b["inputs"][0]["data"] = json!([true, true, true, true])), "more than one of data"),
        ("byte size missing", request(&|b| { b["inputs"][0]["parameters"].as_object_mut().unwrap().remove("shared_memory_byte_size"); }), "shared_memory_byte_size is missing"),
    ];
    for (case, body, expected) in cases {
        let started = Instant::now();
        let (status, answer) = post(&client, &gateway, infer, &body).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert!(error_of(&answer).contains(expected), "{case}: {answer} should contain {expected:?}");
        // Refused before the model: the batcher would have held it 1.5 s.
        assert!(started.elapsed() < Duration::from_millis(1000), "{case} reached the model");
    }

    // The good request, held 1.5 s by the batcher; meanwhile its regions stay.
    let good = request(&|_| {});
    let running = {
        let (client, url) = (client.clone(), gateway.url(infer));
        tokio::spawn(async move {
            let response = client.post(url).body(good.to_string()).send().await.expect("POST");
            (response.status(), response.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    for path in ["/v2/systemsharedmemory/region/in/unregister", "/v2/systemsharedmemory/unregister"] {
        let (status, body) = post(&client, &gateway, path, &json!({})).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(error_of(&body).contains("in use"), "{body}");
    }
    let (status, answer) = running.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let described = answer["outputs"].as_array().unwrap();
    assert_eq!(described.len(), outputs.len());
    let mut offset = 0;
    for ((name, _, want), out) in outputs.iter().zip(described) {
        assert_eq!(out["name"], json!(name));
        assert_eq!(out["parameters"]["shared_memory_region"], "out", "{out}");
        assert!(out.get("data").is_none(), "{name}: data crossed HTTP too");
        let mut got = vec![0u8; want.len()];
        // The gateway wrote the region before answering.
        output_object.copy_out(offset, &mut got).expect("inside the object");
        assert_eq!(&got, want, "{name} in the output region differs from the reference");
        offset += want.len();
    }

    // Answered: now the regions go.
    let (status, body) = post(&client, &gateway, "/v2/systemsharedmemory/unregister", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let status: Value = client.get(gateway.url("/v2/systemsharedmemory/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status, json!([]));
}
