//! The system_shared_memory extension's routes, through the real gateway:
//! regions this test creates (as Triton's client does: shm_open, ftruncate,
//! mmap) are registered, listed and unregistered; each client mistake is a
//! 400 naming it; with the flag off every route answers the disabled error
//! and `GET /v2` does not offer the extension. Triton's stock Python client
//! drives the same routes unmodified. No model host is needed for these
//! routes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use integration_tests::{Gateway, Scratch, root};
use reqwest::StatusCode;
use serde_json::{Value, json};
use protocol::shm::mapping::Mapping;

/// A client's shm object of `size` bytes; removed when dropped.
fn client_object(size: usize) -> (Mapping, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let key = format!("/split-test-shm.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    (Mapping::create(&key, size).expect("creating a shm object"), key)
}

async fn start(scratch: &Scratch, extra: &[&str]) -> Gateway {
    let gateway = scratch.start_gateway(extra);
    gateway.wait_for("/v2/health/live", Duration::from_secs(30)).await;
    gateway
}

async fn get(client: &reqwest::Client, gateway: &Gateway, path: &str) -> (StatusCode, Value) {
    let response = client.get(gateway.url(path)).send().await.expect("GET");
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

/// POSTs `body` as Triton's client does: no Content-Type.
async fn post(client: &reqwest::Client, gateway: &Gateway, path: &str, body: String) -> (StatusCode, Value) {
    let response = client.post(gateway.url(path)).body(body).send().await.expect("POST");
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

async fn register(client: &reqwest::Client, gateway: &Gateway, name: &str, body: Value) -> (StatusCode, Value) {
    post(client, gateway, &format!("/v2/systemsharedmemory/region/{name}/register"), body.to_string()).await
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test]
async fn regions_are_registered_listed_and_unregistered() {
    let scratch = Scratch::new();
    let client = reqwest::Client::new();
    let gateway = start(&scratch, &["--system-shared-memory"]).await;
    let (_input, input_key) = client_object(4096);
    let (_output, output_key) = client_object(64);

    let (status, body) = get(&client, &gateway, "/v2").await;
    assert_eq!(status, 200);
    assert!(body["extensions"].as_array().unwrap().contains(&json!("system_shared_memory")), "{body}");
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/status").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));

    let (status, body) = register(&client, &gateway, "input0", json!({"key": input_key, "offset": 96, "byte_size": 4000})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = register(&client, &gateway, "output0", json!({"key": output_key, "offset": 0, "byte_size": 64})).await;
    assert_eq!(status, 200, "{body}");
    let input_status = json!({"name": "input0", "key": input_key, "offset": 96, "byte_size": 4000});
    let output_status = json!({"name": "output0", "key": output_key, "offset": 0, "byte_size": 64});
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/status").await;
    assert_eq!((status, body), (StatusCode::OK, json!([input_status, output_status])));
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/region/output0/status").await;
    assert_eq!((status, body), (StatusCode::OK, json!([output_status])));

    // Each mistake: 400 naming it, and nothing registered.
    let cases = [
        ("input0", json!({"key": output_key, "offset": 0, "byte_size": 8}), "already registered"),
        ("other", json!({"key": "/split-test-shm.no-such-key", "offset": 0, "byte_size": 8}), "unable to open"),
        ("other", json!({"key": output_key, "offset": 32, "byte_size": 33}), "past the end"),
        ("other", json!({"key": output_key, "offset": u64::MAX, "byte_size": 2}), "past the end"),
        ("other", json!({"key": "no-slash", "offset": 0, "byte_size": 8}), "must start with '/'"),
        ("other", json!({"key": "/model-host.1.2", "offset": 0, "byte_size": 8}), "model host's own"),
        ("other", json!({"key": output_key, "offset": -1, "byte_size": 8}), "register body"),
        ("other", json!({"offset": 0, "byte_size": 8}), "missing field `key`"),
    ];
    for (name, request, expected) in cases {
        let (status, body) = register(&client, &gateway, name, request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(error_of(&body).contains(expected), "{request}: {body}");
    }
    let (status, body) = post(&client, &gateway, "/v2/systemsharedmemory/region/other/register", "{not json".into()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/region/other/status").await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("no shared memory region named \"other\""), "{body}");

    // Unregister one (twice: an unknown name is no error, as in Triton), then all.
    for _ in 0..2 {
        let (status, body) = post(&client, &gateway, "/v2/systemsharedmemory/region/input0/unregister", String::new()).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/status").await;
    assert_eq!((status, body), (StatusCode::OK, json!([output_status])));
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/region/input0/status").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&client, &gateway, "/v2/systemsharedmemory/unregister", String::new()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&client, &gateway, "/v2/systemsharedmemory/status").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn every_route_is_refused_when_the_flag_is_off() {
    let scratch = Scratch::new();
    let client = reqwest::Client::new();
    let gateway = start(&scratch, &[]).await;
    let (_object, key) = client_object(64);

    let (status, body) = get(&client, &gateway, "/v2").await;
    assert_eq!(status, 200);
    assert!(!body["extensions"].as_array().unwrap().contains(&json!("system_shared_memory")), "{body}");

    let register_body = json!({"key": key, "offset": 0, "byte_size": 64}).to_string();
    let answers = [
        get(&client, &gateway, "/v2/systemsharedmemory/status").await,
        get(&client, &gateway, "/v2/systemsharedmemory/region/r/status").await,
        post(&client, &gateway, "/v2/systemsharedmemory/region/r/register", register_body).await,
        post(&client, &gateway, "/v2/systemsharedmemory/unregister", String::new()).await,
        post(&client, &gateway, "/v2/systemsharedmemory/region/r/unregister", String::new()).await,
    ];
    for (status, body) in answers {
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["type"], "shared_memory_disabled", "{body}");
        assert!(error_of(&body).contains("--system-shared-memory"), "{body}");
    }
}

/// Triton's client, unmodified: creates a region with its own helper,
/// registers it, reads the status back, unregisters it.
const PYTHON_CHECK: &str = r#"
import sys
import tritonclient.http as http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

client = http.InferenceServerClient(url=sys.argv[1])
key = sys.argv[2]
handle = shm.create_shared_memory_region("input0", key, 256)
try:
    client.register_system_shared_memory("input0", key, 200, offset=56)
    status = client.get_system_shared_memory_status()
    assert status == [{"name": "input0", "key": key, "offset": 56, "byte_size": 200}], status
    assert client.get_system_shared_memory_status("input0") == status
    try:
        client.register_system_shared_memory("input0", key, 8)
        raise SystemExit("a duplicate registration was accepted")
    except InferenceServerException as e:
        assert "already registered" in e.message(), e.message()
    client.unregister_system_shared_memory("input0")
    assert client.get_system_shared_memory_status() == []
    client.register_system_shared_memory("again", key, 256)
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []
finally:
    shm.destroy_shared_memory_region(handle)
print("system shared memory check: ok")
"#;

#[tokio::test]
async fn stock_triton_client_registers_and_unregisters() {
    let python = root().join(".venv/bin/python");
    let has_client = std::process::Command::new(&python).args(["-c", "import tritonclient.http"]).status().is_ok_and(|s| s.success());
    assert!(has_client, "{} cannot import tritonclient.http: run scripts/setup", python.display());
    let scratch = Scratch::new();
    let gateway = start(&scratch, &["--system-shared-memory"]).await;
    let key = format!("/split-test-shm-py.{}", std::process::id());
    let output = tokio::process::Command::new(&python)
        .args(["-c", PYTHON_CHECK, &format!("127.0.0.1:{}", gateway.port), &key])
        .output()
        .await
        .expect("running python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Triton client check failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("system shared memory check: ok"), "{stdout}");
}
