//! Test harness: start the real `model-host` and `gateway` binaries on a
//! temporary socket and a free port, wait for them, and always clean up.
//! A process's log is printed when the test that owns it fails.
//! [`raw_control`] speaks the host's control protocol frame by frame, for
//! tests that play a broken or hostile gateway. [`nspawn`] boots a container
//! with a real systemd, for tests that run the units under it; [`netns`]
//! makes network namespaces that stand in for separate machines.

pub mod netns;
pub mod nspawn;
pub mod otlp;
pub mod raw_control;
pub mod silent_host;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

/// The default model, made by scripts/setup.
pub fn digits_model() -> PathBuf {
    let dir = root().join("models/digits");
    assert!(dir.join("model.pt").exists(), "models/digits is missing: run scripts/setup first");
    dir
}

/// `model`'s model.toml, edited, written into `dir` as `name`: its `file`
/// made absolute (the copy loads the same weights), then `edit` applied to
/// the text. The path, for `--model`.
pub fn model_toml_copy(model: &Path, dir: &Path, name: &str, edit: impl FnOnce(String) -> String) -> String {
    let original = std::fs::read_to_string(model.join("model.toml")).expect("reading model.toml");
    let weights = model.join("model.pt").display().to_string();
    let text = edit(original.replace("file = \"model.pt\"", &format!("file = {weights:?}")));
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing the model.toml copy");
    path.display().to_string()
}

/// A model.toml's text with its `[batching]` table (the last one in the
/// projects' files) replaced by `batching`: a policy of the test's own.
pub fn with_batching(text: String, batching: &str) -> String {
    let head = text.split("[batching]").next().expect("split yields one piece at least");
    format!("{head}[batching]\n{batching}\n")
}

/// Path of a workspace binary, built once per test process so that tests
/// never run a stale one.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "model-host", "-p", "gateway"])
            .current_dir(root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    // target/<profile>/deps/<this test> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").join(name)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding port 0").port()
}

/// A running child process whose log goes to a file.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args`, its stdout and stderr to `log`.
    pub fn spawn(name: &str, binary: &Path, args: &[String], env: &[(&str, String)], log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("creating log file");
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Process { name: name.to_string(), child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        let child = self.child.as_mut()?;
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}----- end of {} -----", self.name, self.log(), self.name);
        }
        self.kill();
    }
}

/// A scratch directory for sockets and logs.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix("split-test-").tempdir().expect("tempdir") }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("host.sock")
    }

    pub fn start_host(&self, extra: &[&str]) -> Process {
        self.start_host_with_env(extra, &[])
    }

    /// Starts a host; flags in `extra` replace the harness's defaults.
    pub fn start_host_with_env(&self, extra: &[&str], env: &[(&str, String)]) -> Process {
        let defaults = [
            ("--socket", self.socket().display().to_string()),
            ("--model", digits_model().display().to_string()),
            ("--device", "cpu".to_string()),
            ("--cpu-threads", "2".to_string()),
        ];
        let mut args: Vec<String> = defaults
            .into_iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let n = std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0);
        Process::spawn("model-host", &binary("model-host"), &args, env, self.dir.path().join(format!("host-{n}.log")))
    }

    pub fn start_gateway(&self, extra: &[&str]) -> Gateway {
        self.start_gateway_with(free_port(), extra, &[])
    }

    pub fn start_gateway_with_env(&self, extra: &[&str], env: &[(&str, String)]) -> Gateway {
        self.start_gateway_with(free_port(), extra, env)
    }

    /// A gateway that binds `port` itself.
    pub fn start_gateway_on_port(&self, port: u16) -> Gateway {
        self.start_gateway_with(port, &[], &[])
    }

    fn start_gateway_with(&self, port: u16, extra: &[&str], env: &[(&str, String)]) -> Gateway {
        let mut args = vec![
            "--host-socket".to_string(),
            self.socket().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let n = std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0);
        let log = self.dir.path().join(format!("gateway-{port}-{n}.log"));
        Gateway { process: Process::spawn(&format!("gateway:{port}"), &binary("gateway"), &args, env, log), port }
    }
}

impl Scratch {
    /// Starts a gateway on a listening socket that this test process holds
    /// (as systemd would): the socket becomes the child's fd 3 with
    /// LISTEN_FDS=1 and LISTEN_PID set to the gateway's own pid.
    pub fn start_gateway_on_held_socket(&self, listener: &TcpListener, tag: &str) -> Gateway {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        use std::os::fd::AsRawFd;
        let port = listener.local_addr().expect("local_addr").port();
        let fd = listener.as_raw_fd();
        // Inheritable for this one spawn only.
        fcntl(listener, FcntlArg::F_SETFD(FdFlag::empty())).expect("clearing FD_CLOEXEC");
        let script = format!("exec 3<&{fd} {fd}<&-; LISTEN_FDS=1 LISTEN_PID=$$ exec \"$0\" \"$@\"");
        let args = vec![
            "-c".to_string(),
            script,
            binary("gateway").display().to_string(),
            "--host-socket".to_string(),
            self.socket().display().to_string(),
        ];
        let log = self.dir.path().join(format!("gateway-held-{tag}.log"));
        let process = Process::spawn(&format!("gateway:held:{tag}"), Path::new("/bin/sh"), &args, &[], log);
        fcntl(listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("restoring FD_CLOEXEC");
        Gateway { process, port }
    }
}

impl Scratch {
    /// A gateway started by `systemd-socket-activate`, which binds the port
    /// and execs the gateway with the socket in LISTEN_FDS (as systemd does).
    pub fn start_gateway_socket_activated(&self) -> Gateway {
        let port = free_port();
        let args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            binary("gateway").display().to_string(),
            "--host-socket".to_string(),
            self.socket().display().to_string(),
        ];
        let log = self.dir.path().join(format!("gateway-activated-{port}.log"));
        let process = Process::spawn("gateway:activated", Path::new("systemd-socket-activate"), &args, &[], log);
        Gateway { process, port }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Gateway {
    pub process: Process,
    pub port: u16,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn predict_url(&self) -> String {
        self.url("/v1/models/digits/predict")
    }

    /// Polls `path` until it answers 200.
    pub async fn wait_for(&self, path: &str, limit: Duration) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url(path)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(started.elapsed() < limit, "{} did not answer 200 on {path} within {limit:?}", self.process.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_ready(&self) {
        self.wait_for("/health/ready", Duration::from_secs(120)).await;
    }

    /// The host's counters, through this gateway.
    pub async fn host_status(&self) -> serde_json::Value {
        reqwest::get(self.url("/v1/host/status")).await.expect("status request").json().await.expect("status json")
    }
}

/// One held-out test image: its file, bytes and true label.
pub struct Sample {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub label: String,
}

/// The held-out set in one presentation (gray8, rgb64, inv28, rgba48),
/// written by scripts/train_digits.py; file names are `<index>_<label>.png`.
pub fn testset(presentation: &str) -> Vec<Sample> {
    let dir = digits_model().join("testset").join(presentation);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let stem = path.file_stem().expect("file stem").to_string_lossy().into_owned();
            let label = stem.rsplit('_').next().expect("<index>_<label>").to_string();
            Sample { bytes: std::fs::read(&path).expect("reading sample"), path, label }
        })
        .collect()
}

/// A v2 request to the digits model with binary tensor data: `json` then
/// `data`, the header saying where they meet (or `header`, to lie).
pub async fn infer_binary(
    client: &reqwest::Client,
    gateway: &Gateway,
    json: &serde_json::Value,
    data: &[u8],
    header: Option<usize>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let json = json.to_string();
    let response = client
        .post(gateway.url("/v2/models/digits/infer"))
        .header("Inference-Header-Content-Length", header.unwrap_or(json.len()).to_string())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body([json.as_bytes(), data].concat())
        .send()
        .await
        .expect("POST");
    (response.status(), response.json().await.unwrap_or(serde_json::Value::Null))
}

/// BYTES elements: each a u32 little-endian length, then the bytes.
pub fn bytes_tensor(elements: &[&[u8]]) -> Vec<u8> {
    elements.iter().flat_map(|e| [&(e.len() as u32).to_le_bytes()[..], e].concat()).collect()
}

/// POSTs an image; the status and the parsed JSON body.
pub async fn post_image(
    client: &reqwest::Client,
    url: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, serde_json::Value) {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(bytes)
        .send()
        .await
        .expect("sending the request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// The label of the best prediction in a predict response.
pub fn top_label(body: &serde_json::Value) -> String {
    body["predictions"][0]["label"].as_str().unwrap_or_else(|| panic!("no prediction in {body}")).to_string()
}

/// Names of our segments currently in /dev/shm.
/// The named segments in /dev/shm of the hosts with these pids. A test
/// asks only about its own hosts: the other tests of its binary run at the
/// same time, and their hosts' names exist for a moment during each
/// gateway's handshake (created, mapped by the gateway, unlinked), so a
/// snapshot of all of /dev/shm sees them now and then.
pub fn segments_of(pids: &[u32]) -> Vec<String> {
    our_segments().into_iter().filter(|name| pids.iter().any(|pid| name.starts_with(&format!("model-host.{pid}.")))).collect()
}

pub fn our_segments() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("model-host."))
                .collect()
        })
        .unwrap_or_default()
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A field of /proc/<pid>/status in its unit (kB for memory), e.g. "Threads", "VmRSS", "VmHWM".
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls `check` until it is true or `limit` passes; how long it took.
pub async fn eventually(limit: std::time::Duration, mut check: impl AsyncFnMut() -> bool) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    None
}

/// Of the first `count` samples of `presentation`, those that the model
/// behind `gateway` gets right when nothing else is going on (held-out
/// accuracy is 99.7%, not 100%), so that a test can require every answer
/// under stress to be right.
pub async fn rightly_classified(gateway: &Gateway, presentation: &str, count: usize) -> Vec<Sample> {
    let client = reqwest::Client::new();
    let mut right = Vec::new();
    for sample in testset(presentation).into_iter().take(count) {
        let (status, _, body) = post_image(&client, &gateway.predict_url(), sample.bytes.clone(), "image/png").await;
        assert_eq!(status, 200, "{body}");
        if top_label(&body) == sample.label {
            right.push(sample);
        }
    }
    right
}

/// Little-endian bytes of JSON values of a datatype (for binary requests).
pub fn encode(datatype: &str, values: &[serde_json::Value]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| -> Vec<u8> {
            match datatype {
                "BOOL" => vec![u8::from(v.as_bool().unwrap())],
                "UINT8" => vec![v.as_u64().unwrap() as u8],
                "INT8" => (v.as_i64().unwrap() as i8).to_le_bytes().to_vec(),
                "INT16" => (v.as_i64().unwrap() as i16).to_le_bytes().to_vec(),
                "INT32" => (v.as_i64().unwrap() as i32).to_le_bytes().to_vec(),
                "INT64" => v.as_i64().unwrap().to_le_bytes().to_vec(),
                "FP16" => half::f16::from_f64(v.as_f64().unwrap()).to_le_bytes().to_vec(),
                "BF16" => half::bf16::from_f64(v.as_f64().unwrap()).to_le_bytes().to_vec(),
                "FP32" => (v.as_f64().unwrap() as f32).to_le_bytes().to_vec(),
                "FP64" => v.as_f64().unwrap().to_le_bytes().to_vec(),
                other => panic!("no encoding for {other}"),
            }
        })
        .collect()
}


impl Scratch {
    /// A directory for host sockets only (mode 0700, as --host-dir wants
    /// it), inside the scratch directory.
    pub fn hosts_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("hosts");
        std::fs::create_dir_all(&dir).expect("creating hosts/");
        dir
    }

    /// A gateway on a free port with exactly these host flags (no default
    /// --host-socket): `--host-dir`, several `--host-socket`s, ...
    pub fn start_gateway_for(&self, host_flags: &[&str]) -> Gateway {
        let port = free_port();
        let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
        args.extend(host_flags.iter().map(|s| s.to_string()));
        let n = std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0);
        let log = self.dir.path().join(format!("gateway-{port}-{n}.log"));
        Gateway { process: Process::spawn(&format!("gateway:{port}"), &binary("gateway"), &args, &[], log), port }
    }
}
