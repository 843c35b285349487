//! The Open Inference Protocol (KServe v2 REST) routes, through the real
//! binaries: health and metadata before and after the host is ready, model
//! configuration, inference on PIXELS (answered like `/v1/.../predict`),
//! classification output, and each client mistake as a 400/404 naming it.

use std::time::Duration;

use integration_tests::{Gateway, Scratch, post_image, testset};
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
    assert_eq!(body["extensions"], json!(["model_configuration", "classification"]));

    let _host = scratch.start_host(&[]);
    gateway.wait_for("/v2/health/ready", Duration::from_secs(120)).await;
    for path in ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"] {
        let (status, _, body) = get(&client, &gateway, path).await;
        assert_eq!((status, &body["ready"]), (StatusCode::OK, &json!(true)), "{path}: {body}");
    }

    let expected = json!({
        "name": "digits", "versions": ["1"], "platform": "pytorch_libtorch",
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]},
                   {"name": "PIXELS", "datatype": "UINT8", "shape": [-1, 32, 32, 1]}],
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
    assert_eq!(config["input"][1], json!({"name": "PIXELS", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [32, 32, 1]}));
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
