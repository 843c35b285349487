//! Triton's stock Python gRPC client (`tritonclient[grpc]`, unmodified)
//! against a real host and gateway: tests/python/triton_grpc_check.py
//! checks health, metadata, config, the classifier with raw and typed
//! contents and IMAGE alone, 100 requests on one stream, system shared
//! memory in and out, and one mistake answered with REST's text; then both
//! example tensor models with raw and typed contents against their
//! reference outputs. Needs tests/requirements.txt in .venv (scripts/setup).

use std::process::Command;
use std::time::Duration;

use integration_tests::{Gateway, Scratch, digits_model, free_port, root};

/// A gateway with its gRPC port; `extra` flags after it.
fn grpc_gateway(scratch: &Scratch, extra: &[&str]) -> (Gateway, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--grpc-listen", addr.as_str()];
    args.extend_from_slice(extra);
    (scratch.start_gateway(&args), port)
}

async fn python_check(gateway: &Gateway, grpc_port: u16, args: &[&std::ffi::OsStr]) {
    let python = root().join(".venv/bin/python");
    let has_client = Command::new(&python).args(["-c", "import tritonclient.grpc"]).status().is_ok_and(|s| s.success());
    assert!(has_client, "{} cannot import tritonclient.grpc: run scripts/setup (it installs tests/requirements.txt)", python.display());
    let output = tokio::process::Command::new(&python)
        .arg(root().join("tests/python/triton_grpc_check.py"))
        .args(["--grpc", &format!("127.0.0.1:{grpc_port}"), "--http", &format!("127.0.0.1:{}", gateway.port)])
        .args(args)
        .current_dir(root())
        .output()
        .await
        .expect("running the python check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "triton_grpc_check.py failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("triton grpc check: ok"), "{stdout}");
}

#[tokio::test]
async fn stock_triton_grpc_client_matches_rest_and_the_in_process_model() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let (gateway, grpc) = grpc_gateway(&scratch, &["--system-shared-memory"]);
    gateway.wait_for("/v2/models/digits/ready", Duration::from_secs(60)).await;
    let model_dir = digits_model();
    python_check(&gateway, grpc, &["--model-dir".as_ref(), model_dir.as_os_str()]).await;
}

async fn tensor_model_check(model: &str, tolerance: &str) {
    let model_dir = root().join("models").join(model);
    assert!(model_dir.join("model.pt").exists(), "{} is missing: run scripts/setup", model_dir.display());
    let scratch = Scratch::new();
    let _host = scratch.start_host(&["--model", &model_dir.display().to_string()]);
    let (gateway, grpc) = grpc_gateway(&scratch, &[]);
    gateway.wait_for("/v2/health/ready", Duration::from_secs(120)).await;
    python_check(&gateway, grpc, &["--tensor-model-dir".as_ref(), model_dir.as_os_str(), "--tolerance".as_ref(), tolerance.as_ref()]).await;
}

#[tokio::test]
async fn stock_triton_grpc_client_runs_every_datatype_typed_and_raw() {
    tensor_model_check("dtypes", "0").await;
}

#[tokio::test]
async fn stock_triton_grpc_client_runs_the_detector() {
    tensor_model_check("detector", "1e-4").await;
}
