//! Triton's stock Python HTTP client (`tritonclient[http]`, unmodified)
//! against a real host and gateway: tests/python/triton_client_check.py
//! checks health, metadata, config, PIXELS (JSON and binary in, JSON and
//! binary asked out) and IMAGE inference, and a wrong input name, against
//! the model loaded in its own process. Needs the packages of
//! tests/requirements.txt in .venv, which scripts/setup installs.

use std::process::Command;

use integration_tests::{Scratch, digits_model, root};

#[tokio::test]
async fn stock_triton_http_client_matches_the_in_process_model() {
    let python = root().join(".venv/bin/python");
    let has_client = Command::new(&python).args(["-c", "import tritonclient.http"]).status().is_ok_and(|s| s.success());
    assert!(has_client, "{} cannot import tritonclient.http: run scripts/setup (it installs tests/requirements.txt)", python.display());

    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    gateway.wait_for("/v2/models/digits/ready", std::time::Duration::from_secs(30)).await;

    let script = root().join("tests/python/triton_client_check.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--url", &format!("127.0.0.1:{}", gateway.port)])
        .arg("--model-dir")
        .arg(digits_model())
        .current_dir(root())
        .output()
        .await
        .expect("running the triton client check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "triton_client_check.py failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("triton client check: ok"), "{stdout}");
}
