//! `GET /openapi.json` and `GET /docs` of a running gateway in front of a
//! fleet (the digits classifier, the shapes detector and segmenter, the
//! dtypes tensor model): the document is valid OpenAPI
//! (openapi-spec-validator); schemathesis's generated requests, sent to
//! every route, get no 5xx and no answer the document does not describe
//! (status, content type, body); and the successful answers schemathesis
//! seldom reaches (inferences, vision answers) match their schemas
//! (tests/python/openapi_answers_check.py). Needs the packages of
//! tests/requirements.txt in .venv (scripts/setup). A second test opens
//! /docs in headless Chromium (Debian's, from scripts/setup).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{Gateway, Process, Scratch, digits_model, root};

fn start_host_on(scratch: &Scratch, socket: &Path, model: &Path) -> Process {
    scratch.start_host(&["--socket", &socket.display().to_string(), "--model", &model.display().to_string()])
}

/// A gateway over a host directory with one host per model.
fn fleet(scratch: &Scratch) -> (Vec<Process>, Gateway) {
    let hosts = scratch.hosts_dir();
    let models = [digits_model(), root().join("models/shapes-detector"), root().join("models/shapes-segmenter"), root().join("models/dtypes")];
    let processes = models
        .iter()
        .map(|model| {
            assert!(model.join("model.pt").exists(), "{} is missing: run scripts/setup", model.display());
            let name = model.file_name().unwrap().to_string_lossy();
            start_host_on(scratch, &hosts.join(format!("{name}.sock")), model)
        })
        .collect();
    // With the shared-memory routes on, so that they answer more than 403.
    let gateway = scratch.start_gateway_for(&["--host-dir", &hosts.display().to_string(), "--system-shared-memory"]);
    (processes, gateway)
}

/// Runs `.venv/bin/<program>` with `args` in `dir` (where schemathesis and
/// Hypothesis leave their caches); its output is printed, and a failure shows it.
fn venv(program: &str, args: &[&str], dir: &Path) {
    let path = root().join(".venv/bin").join(program);
    assert!(path.exists(), "{} is missing: run scripts/setup (it installs tests/requirements.txt)", path.display());
    let output = Command::new(&path).args(args).current_dir(dir).output().expect("running a .venv program");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{program}: {stdout}\n{stderr}");
    assert!(output.status.success(), "{program} {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
}

#[tokio::test]
async fn the_live_document_is_valid_and_the_gateway_keeps_to_it() {
    let scratch = Scratch::new();
    let (_hosts, gateway) = fleet(&scratch);
    gateway.wait_ready().await;
    for model in ["digits", "shapes-detector", "shapes-segmenter", "dtypes"] {
        gateway.wait_for(&format!("/v2/models/{model}/ready"), Duration::from_secs(120)).await;
    }

    let spec = reqwest::get(gateway.url("/openapi.json")).await.expect("GET /openapi.json");
    assert!(spec.status().is_success(), "{}", spec.status());
    let spec = spec.bytes().await.expect("the document");
    let document: serde_json::Value = serde_json::from_slice(&spec).expect("JSON");
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", document["openapi"]);
    let file = scratch.dir.path().join("openapi.json");
    std::fs::write(&file, &spec).expect("writing the document");
    let file = file.display().to_string();
    venv("python", &["-m", "openapi_spec_validator", &file], scratch.dir.path());

    let docs = reqwest::get(gateway.url("/docs/")).await.expect("GET /docs/");
    assert!(docs.status().is_success(), "{}", docs.status());
    assert!(docs.text().await.unwrap().contains("swagger-ui"), "/docs/ is not Swagger UI");

    // Bounded: a few examples per operation, in well under a minute on 2 cores.
    let url = gateway.url("");
    let checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
    // One worker: with two, Hypothesis (under schemathesis) now and then
    // fails inside itself while two threads build strategies at once.
    // A fixed seed and deterministic generation: the same requests every
    // run, so a finding is reproducible and a pass is not luck.
    // Blocking this runtime is harmless: the gateway and hosts are processes of their own.
    let config = root().join("tests/schemathesis.toml").display().to_string();
    let args = ["--config-file", &config, "run", &file, "--url", &url, "--checks", checks, "--max-examples", "10", "--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "10", "--seed", "20261207", "--generation-deterministic"];
    venv("schemathesis", &args, scratch.dir.path());

    let script = root().join("tests/python/openapi_answers_check.py").display().to_string();
    let image = root().join("models/shapes-segmenter/testset/043_110x170.png").display().to_string();
    venv("python", &[&script, "--spec", &file, "--url", &url, "--image", &image], scratch.dir.path());
}

/// /docs in a real browser: Swagger UI renders the gateway's document,
/// fetches nothing from anywhere else, and "Try it out" on predict with a
/// held-out digit shows the right label (tests/python/docs_page_check.py).
#[tokio::test]
async fn the_docs_page_lists_the_routes_and_predicts_in_a_browser() {
    for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(program).exists(), "{program} is missing: run scripts/setup (Debian's chromium and chromium-driver)");
    }
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let script = root().join("tests/python/docs_page_check.py").display().to_string();
    let image = digits_model().join("testset/rgb64/000_7.png").display().to_string();
    venv("python", &[&script, "--url", &gateway.url(""), "--image", &image, "--label", "7"], scratch.dir.path());
}
