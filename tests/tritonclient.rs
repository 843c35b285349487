//! Triton's stock Python HTTP client (`tritonclient[http]`, unmodified)
//! against a real host and gateway: tests/python/triton_client_check.py
//! checks health, metadata, config, PIXELS (JSON and binary in, JSON and
//! binary asked out) and IMAGE inference, PIXELS and PROBABILITIES through
//! registered system shared-memory regions, and a wrong input name,
//! against the model loaded in its own process; then, for the `dtypes`
//! tensor model, every datatype as JSON, binary and shared-memory data
//! (tests/python/triton_tensor_check.py). Needs the packages of
//! tests/requirements.txt in .venv, which scripts/setup installs.

use std::process::Command;

use integration_tests::{Scratch, digits_model, root};

/// Runs `tests/python/<script>` (Triton's client) against `gateway` with
/// `args` after `--url`; it must exit 0 and print `ok`.
async fn python_check(script: &str, gateway: &integration_tests::Gateway, args: &[&std::ffi::OsStr], ok: &str) {
    let python = root().join(".venv/bin/python");
    let has_client = Command::new(&python).args(["-c", "import tritonclient.http"]).status().is_ok_and(|s| s.success());
    assert!(has_client, "{} cannot import tritonclient.http: run scripts/setup (it installs tests/requirements.txt)", python.display());
    let output = tokio::process::Command::new(&python)
        .arg(root().join("tests/python").join(script))
        .args(["--url", &format!("127.0.0.1:{}", gateway.port)])
        .args(args)
        .current_dir(root())
        .output()
        .await
        .expect("running a python check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "{script} failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains(ok), "{stdout}");
}

#[tokio::test]
async fn stock_triton_http_client_matches_the_in_process_model() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&["--system-shared-memory"]);
    gateway.wait_ready().await;
    gateway.wait_for("/v2/models/digits/ready", std::time::Duration::from_secs(30)).await;
    let model_dir = digits_model();
    let args = ["--model-dir".as_ref(), model_dir.as_os_str(), "--shared-memory".as_ref()];
    python_check("triton_client_check.py", &gateway, &args, "triton client check: ok").await;
}

/// Runs tests/python/triton_tensor_check.py against a host serving the
/// example tensor model `model` (made by scripts/setup).
async fn tensor_model_check(model: &str, tolerance: &str) {
    let model_dir = root().join("models").join(model);
    assert!(model_dir.join("model.pt").exists(), "{} is missing: run scripts/setup", model_dir.display());
    let scratch = Scratch::new();
    let _host = scratch.start_host(&["--model", &model_dir.display().to_string()]);
    let gateway = scratch.start_gateway(&["--system-shared-memory"]);
    gateway.wait_for("/v2/health/ready", std::time::Duration::from_secs(120)).await;
    let args = ["--tolerance".as_ref(), tolerance.as_ref(), "--model-dir".as_ref(), model_dir.as_os_str()];
    python_check("triton_tensor_check.py", &gateway, &args, "triton tensor check: ok").await;
}

#[tokio::test]
async fn stock_triton_http_client_runs_every_datatype() {
    tensor_model_check("dtypes", "0").await;
}

#[tokio::test]
async fn stock_triton_http_client_runs_the_detector() {
    // The host runs on the CPU here: within 4e-6 of the reference (on CUDA up to 1.3e-3, docs/gpu.md).
    tensor_model_check("detector", "1e-4").await;
}
