//! The Open Inference Protocol (KServe v2 REST) routes, through the real
//! binaries: health and metadata before and after the host is ready, model
//! configuration, inference on PIXELS (answered like `/v1/.../predict`),
//! classification output, encoded images as binary tensor data, binary
//! outputs, the client's `parameters.timeout`, statistics, and each client
//! mistake as a 400/404 naming it.

use std::time::Duration;

use integration_tests::{Gateway, Scratch, bytes_tensor, infer_binary, post_image, testset};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get(client: &reqwest::Client, gateway: &Gateway, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = client.get(gateway.url(path)).send().await.expect("GET");
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

async fn infer(client: &reqwest::Client, gateway: &Gateway, path: &str, body: String) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let (status, headers, body) = post_image(client, &gateway.url(path), body.into_bytes(), "application/json").await;
    (status, headers, body)
}

/// The first `n` held-out digits as the model's input: 32x32 gray, resized
/// client-side as tests/batching.rs does; with their true labels.
fn pixels(n: usize) -> Vec<(Vec<u8>, String)> {
    testset("gray8")
        .into_iter()
        .take(n)
        .map(|s| {
            let image = image::load_from_memory(&s.bytes).unwrap().into_luma8();
            let image = image::imageops::resize(&image, 32, 32, image::imageops::FilterType::Triangle);
            (image.into_raw(), s.label)
        })
        .collect()
}

/// A PIXELS request for these elements, nested as [n][32][32][1].
fn pixels_request(elements: &[Vec<u8>], outputs: Value) -> String {
    let nested: Vec<Vec<Vec<Vec<u8>>>> =
        elements.iter().map(|e| e.chunks(32).map(|row| row.iter().map(|&p| vec![p]).collect()).collect()).collect();
    json!({"id": "req-1", "inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [elements.len(), 32, 32, 1], "data": nested}],
           "outputs": outputs})
    .to_string()
}

/// A binary answer split into its JSON header and its raw data, after
/// checking the headers that say it is one.
async fn binary_answer(response: reqwest::Response) -> (Value, Vec<u8>) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[reqwest::header::CONTENT_TYPE], "application/octet-stream");
    let split: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let body = response.bytes().await.expect("body");
    (serde_json::from_slice(&body[..split]).expect("a JSON header"), body[split..].to_vec())
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test]
async fn health_metadata_and_config_follow_the_host() {
    let scratch = Scratch::new();
    let client = reqwest::Client::new();
    // The gateway first, with no host: live, not ready.
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_for("/v2/health/live", Duration::from_secs(30)).await;
    let (status, headers, body) = get(&client, &gateway, "/v2/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(error_of(&body).contains("not available"), "{body}");
    let (status, headers, body) = infer(&client, &gateway, "/v2/models/digits/infer", "{}".into()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let (status, _, body) = get(&client, &gateway, "/v2").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "split-serve");
    assert!(body["version"].as_str().is_some_and(|v| !v.is_empty()), "{body}");
    assert_eq!(body["extensions"], json!(["model_configuration", "classification", "binary_tensor_data", "statistics"]));

    let _host = scratch.start_host(&[]);
    gateway.wait_for("/v2/health/ready", Duration::from_secs(120)).await;
    for path in ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"] {
        let (status, _, body) = get(&client, &gateway, path).await;
        assert_eq!((status, &body["ready"]), (StatusCode::OK, &json!(true)), "{path}: {body}");
    }

    let expected = json!({
        "name": "digits", "versions": ["1"], "platform": "pytorch_libtorch",
        // Alternatives, each optional (Triton's mark, for generic clients).
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1], "parameters": {"optional": true}},
                   {"name": "PIXELS", "datatype": "UINT8", "shape": [-1, 32, 32, 1], "parameters": {"optional": true}}],
        "outputs": [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 10]}],
    });
    for path in ["/v2/models/digits", "/v2/models/digits/versions/1"] {
        let (status, _, body) = get(&client, &gateway, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body, expected, "{path}");
    }

    let (status, _, config) = get(&client, &gateway, "/v2/models/digits/config").await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["name"], "digits");
    assert_eq!(config["platform"], "pytorch_libtorch");
    assert_eq!(config["max_batch_size"], 32);
    assert_eq!(config["input"][0]["name"], "IMAGE");
    assert_eq!(config["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(config["input"][0]["optional"], true);
    assert_eq!(config["input"][1], json!({"name": "PIXELS", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [32, 32, 1], "optional": true}));
    assert_eq!(config["output"][0], json!({"name": "PROBABILITIES", "data_type": "TYPE_FP32", "dims": [10]}));

    // Unknown models and versions: 404 with a message naming them.
    for (path, names) in [
        ("/v2/models/cats", "\"cats\""),
        ("/v2/models/cats/ready", "\"cats\""),
        ("/v2/models/cats/config", "\"cats\""),
        ("/v2/models/digits/versions/2", "version \"2\""),
        ("/v2/models/digits/versions/2/ready", "version \"2\""),
        ("/v2/models/digits/versions/2/config", "version \"2\""),
    ] {
        let (status, _, body) = get(&client, &gateway, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(error_of(&body).contains(names), "{path}: {body}");
    }
    let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/versions/7/infer", "{}".into()).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn pixels_are_classified_like_v1_predict() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let samples = pixels(8);
    let elements: Vec<Vec<u8>> = samples.iter().map(|(p, _)| p.clone()).collect();

    // One v2 request carries the whole batch, with the version in the path.
    let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/versions/1/infer", pixels_request(&elements, json!([]))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["model_name"], &body["model_version"], &body["id"]), (&json!("digits"), &json!("1"), &json!("req-1")));
    let output = &body["outputs"][0];
    assert_eq!((&output["name"], &output["datatype"], &output["shape"]), (&json!("PROBABILITIES"), &json!("FP32"), &json!([8, 10])));
    let data: Vec<f64> = output["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(data.len(), 80);

    for (i, (element, label)) in samples.iter().enumerate() {
        let scores = &data[i * 10..(i + 1) * 10];
        let sum: f64 = scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "element {i}: probabilities sum to {sum}");
        let best = (0..10).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        let (status, _, v1) = post_image(&client, &gateway.predict_url(), element.clone(), "application/x-pixels").await;
        assert_eq!(status, 200, "{v1}");
        assert_eq!(v1["predictions"][0]["index"], best, "element {i} (label {label}): v1 {v1}, v2 {scores:?}");
        let v1_score = v1["predictions"][0]["score"].as_f64().unwrap();
        assert!((v1_score - scores[best]).abs() < 1e-4, "element {i}: v1 score {v1_score}, v2 {}", scores[best]);
    }

    // The classification extension: the best 3 as "score:index:label", flat data as well as nested.
    let flat = json!({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [2, 32, 32, 1], "data": elements[..2].concat()}],
                      "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 3}}]});
    let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/infer", flat.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("id").is_none(), "no id was sent: {body}");
    let output = &body["outputs"][0];
    assert_eq!((&output["datatype"], &output["shape"]), (&json!("BYTES"), &json!([2, 3])), "{body}");
    for i in 0..2 {
        let best = output["data"][i * 3].as_str().unwrap();
        let parts: Vec<&str> = best.split(':').collect();
        let scores = &data[i * 10..(i + 1) * 10];
        let want = (0..10).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        assert_eq!(parts.len(), 3, "{best}");
        assert_eq!((parts[1], parts[2]), (want.to_string().as_str(), want.to_string().as_str()), "{best}");
    }

    // A request id at the 64-byte bound on a 12-element batch: each element's
    // tag (`<id>.<i>`) still fits the bound the host enforces.
    let twelve: Vec<Vec<u8>> = elements.iter().cycle().take(12).cloned().collect();
    let id = "r".repeat(protocol::MAX_REQUEST_TAG);
    let response = client
        .post(gateway.url("/v2/models/digits/infer"))
        .header("content-type", "application/json")
        .header("x-request-id", &id)
        .body(pixels_request(&twelve, json!([])))
        .send()
        .await
        .expect("POST");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
}

#[tokio::test]
async fn client_mistakes_are_400s_that_name_the_field() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let zeros = vec![0u8; 1024];
    let with = |name: &str, datatype: &str, shape: Value, data: Value| {
        json!({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}).to_string()
    };
    let cases = [
        ("not json".to_string(), "not an inference request"),
        (json!({"inputs": "PIXELS"}).to_string(), "not an inference request"),
        (json!({"outputs": []}).to_string(), "missing field `inputs`"),
        (with("INPUT__0", "UINT8", json!([1, 32, 32, 1]), json!(zeros)), "unknown input \"INPUT__0\"; expected PIXELS or IMAGE"),
        (with("PIXELS", "FP32", json!([1, 32, 32, 1]), json!(zeros)), "PIXELS.datatype is FP32; expected UINT8"),
        (with("PIXELS", "U8", json!([1, 32, 32, 1]), json!(zeros)), "unknown datatype \"U8\""),
        (with("PIXELS", "UINT8", json!([1, 28, 28, 1]), json!(vec![0; 784])), "expected [n, 32, 32, 1] with n from 1 to 32"),
        (with("PIXELS", "UINT8", json!([1024]), json!(zeros)), "expected [n, 32, 32, 1]"),
        (with("PIXELS", "UINT8", json!([33, 32, 32, 1]), json!(vec![0; 33 * 1024])), "n from 1 to 32"),
        (with("PIXELS", "UINT8", json!([2, 32, 32, 1]), json!(zeros)), "has 1024 elements; shape [2, 32, 32, 1] needs 2048"),
        (with("PIXELS", "UINT8", json!([1, 32, 32, 1]), json!([[256]])), "element 0 is 256"),
        (with("IMAGE", "BYTES", json!([1]), json!(["aGVsbG8="])), "send PIXELS (UINT8)"),
        (
            json!({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 32, 32, 1], "data": zeros}],
                   "outputs": [{"name": "LOGITS"}]})
            .to_string(),
            "unknown output \"LOGITS\"; expected PROBABILITIES",
        ),
    ];
    for (body, message) in cases {
        let (status, _, answer) = infer(&client, &gateway, "/v2/models/digits/infer", body.clone()).await;
        assert_eq!(status, 400, "{}: {answer}", &body[..body.len().min(200)]);
        assert!(error_of(&answer).contains(message), "wanted {message:?} in {answer}");
        assert_eq!(answer["type"], "invalid_request");
    }
    // Nothing above cost the host a request.
    assert_eq!(gateway.host_status().await["requests_done"].as_u64().unwrap_or(0), 0);
}

#[tokio::test]
async fn encoded_images_as_binary_data_are_classified_like_v1_predict() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let samples: Vec<_> = testset("rgb64").into_iter().take(6).collect();
    let images: Vec<&[u8]> = samples.iter().map(|s| s.bytes.as_slice()).collect();
    let data = bytes_tensor(&images);
    let header = json!({"id": "bin", "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [images.len()],
        "parameters": {"binary_data_size": data.len()}}], "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 1}}]});
    let (status, body) = infer_binary(&client, &gateway, &header, &data, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "bin");
    assert_eq!(body["outputs"][0]["shape"], json!([6, 1]));
    for (i, sample) in samples.iter().enumerate() {
        let (status, _, v1) = post_image(&client, &gateway.predict_url(), sample.bytes.clone(), "image/png").await;
        assert_eq!(status, 200, "{v1}");
        let best = body["outputs"][0]["data"][i].as_str().unwrap();
        let want = format!(":{}:{}", v1["predictions"][0]["index"], v1["predictions"][0]["label"].as_str().unwrap());
        assert!(best.ends_with(&want), "{}: v2 {best}, v1 {v1}", sample.path.display());
    }

    // PIXELS as binary data too.
    let pixels: Vec<u8> = pixels(2).into_iter().flat_map(|(p, _)| p).collect();
    let header = json!({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [2, 32, 32, 1],
        "parameters": {"binary_data_size": pixels.len()}}]});
    let (status, body) = infer_binary(&client, &gateway, &header, &pixels, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([2, 10]));

    // Lengths that do not add up, and bytes that are not an image.
    let (status, body) = infer_binary(&client, &gateway, &header, &pixels, Some(1_000_000)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("Inference-Header-Content-Length is 1000000 but the body has only"), "{body}");
    let (status, body) = infer_binary(&client, &gateway, &header, &pixels[..100], None).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("binary_data_size of PIXELS is 2048 but only 100 bytes"), "{body}");
    let mut longer = pixels.clone();
    longer.extend_from_slice(b"extra");
    let (status, body) = infer_binary(&client, &gateway, &header, &longer, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("5 bytes of binary data after"), "{body}");
    let data = bytes_tensor(&[b"not an image"]);
    let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": data.len()}}]});
    let (status, body) = infer_binary(&client, &gateway, &header, &data, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("IMAGE element 0 is not a PNG, JPEG or WebP image"), "{body}");
    let mut cut = bytes_tensor(&[images[0]]);
    cut.truncate(cut.len() - 10);
    let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": cut.len()}}]});
    let (status, body) = infer_binary(&client, &gateway, &header, &cut, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("BYTES element 0 claims"), "{body}");
}

#[tokio::test]
async fn binary_outputs_carry_the_same_scores_as_json() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let elements: Vec<Vec<u8>> = pixels(3).into_iter().map(|(p, _)| p).collect();
    let post = |body: String| client.post(gateway.url("/v2/models/digits/infer")).body(body).send();

    let (status, headers, json_answer) = infer(&client, &gateway, "/v2/models/digits/infer", pixels_request(&elements, json!([]))).await;
    assert_eq!(status, 200, "{json_answer}");
    assert!(headers.get("inference-header-content-length").is_none(), "JSON unless asked");
    let want: Vec<f32> = json_answer["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();

    // The request-wide flag, and the output's own.
    let mut wide: Value = serde_json::from_str(&pixels_request(&elements, json!([]))).unwrap();
    wide["parameters"] = json!({"binary_data_output": true});
    let own = pixels_request(&elements, json!([{"name": "PROBABILITIES", "parameters": {"binary_data": true}}]));
    for body in [wide.to_string(), own] {
        let (header, raw) = binary_answer(post(body).await.expect("POST")).await;
        let output = &header["outputs"][0];
        assert_eq!((&output["datatype"], &output["shape"]), (&json!("FP32"), &json!([3, 10])), "{header}");
        assert_eq!(output["parameters"]["binary_data_size"], 120, "{header}");
        assert!(output.get("data").is_none(), "{header}");
        assert_eq!(header["id"], "req-1");
        let got: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(got.len(), want.len());
        // Not bit-equal: the host may batch the elements differently each time.
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "binary {got:?} vs JSON {want:?}");
        }
    }

    // Classification strings as BYTES elements: u32 LE length, then the string.
    let classes = pixels_request(&elements[..1], json!([{"name": "PROBABILITIES", "parameters": {"classification": 2, "binary_data": true}}]));
    let (header, raw) = binary_answer(post(classes).await.expect("POST")).await;
    assert_eq!(header["outputs"][0]["datatype"], "BYTES");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], raw.len());
    let first_len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
    let first = std::str::from_utf8(&raw[4..4 + first_len]).unwrap();
    let best = (0..10).max_by(|&a, &b| want[a].total_cmp(&want[b])).unwrap();
    assert!(first.ends_with(&format!(":{best}:{best}")), "{first}");
    let second_len = u32::from_le_bytes(raw[4 + first_len..8 + first_len].try_into().unwrap()) as usize;
    assert_eq!(raw.len(), 8 + first_len + second_len);
}

#[tokio::test]
async fn the_clients_timeout_is_the_deadline() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let elements: Vec<Vec<u8>> = pixels(1).into_iter().map(|(p, _)| p).collect();
    let with_timeout = |us: Value| {
        let mut body: Value = serde_json::from_str(&pixels_request(&elements, json!([]))).unwrap();
        body["parameters"] = json!({"timeout": us});
        body.to_string()
    };
    // Microseconds, as tritonclient sends them: 0 and 1 are past before the host is asked.
    for us in [0, 1] {
        let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/infer", with_timeout(json!(us))).await;
        assert_eq!(status, 504, "timeout {us}: {body}");
        assert_eq!(body["type"], "deadline_exceeded");
    }
    // 10 s is plenty; a day is capped at --request-timeout-ms, not refused.
    for us in [10_000_000u64, 86_400_000_000] {
        let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/infer", with_timeout(json!(us))).await;
        assert_eq!(status, 200, "timeout {us}: {body}");
    }
    let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/infer", with_timeout(json!("soon"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("parameters.timeout is \"soon\""), "{body}");
}

#[tokio::test]
async fn statistics_count_what_this_gateway_served() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let stats = async || {
        let (status, _, body) = get(&client, &gateway, "/v2/models/digits/versions/1/stats").await;
        assert_eq!(status, 200, "{body}");
        let model = body["model_stats"][0].clone();
        assert_eq!((&model["name"], &model["version"]), (&json!("digits"), &json!("1")), "{body}");
        model
    };
    let count = |model: &Value, stage: &str| model["inference_stats"][stage]["count"].as_u64().unwrap();
    let ns = |model: &Value, stage: &str| model["inference_stats"][stage]["ns"].as_u64().unwrap();

    let before = stats().await;
    assert_eq!((&before["inference_count"], &before["execution_count"], &before["last_inference"]), (&json!(0), &json!(0), &json!(0)));
    let elements: Vec<Vec<u8>> = pixels(3).into_iter().map(|(p, _)| p).collect();
    for _ in 0..2 {
        let (status, _, body) = infer(&client, &gateway, "/v2/models/digits/infer", pixels_request(&elements, json!([]))).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, _) = infer(&client, &gateway, "/v2/models/digits/infer", "not json".into()).await;
    assert_eq!(status, 400);

    let after = stats().await;
    assert_eq!((&after["inference_count"], &after["execution_count"]), (&json!(6), &json!(2)), "{after}");
    assert!(after["last_inference"].as_u64().unwrap() > 1_600_000_000_000, "milliseconds since the epoch: {after}");
    assert_eq!((count(&after, "success"), count(&after, "fail")), (2, 1), "{after}");
    assert_eq!((count(&after, "queue"), count(&after, "compute_infer")), (6, 6), "{after}");
    assert_eq!((count(&after, "compute_input"), count(&after, "compute_output")), (2, 2), "{after}");
    for stage in ["success", "fail", "compute_infer", "compute_input", "compute_output"] {
        assert!(ns(&after, stage) > 0, "{stage}: {after}");
    }
    assert!(ns(&after, "success") >= ns(&after, "compute_input"), "{after}");

    for path in ["/v2/models/cats/stats", "/v2/models/digits/versions/2/stats"] {
        let (status, _, body) = get(&client, &gateway, path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
}
