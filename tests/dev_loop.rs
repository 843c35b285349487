//! `scripts/dev` for real: it brings the host and the first gateway up with
//! no outside connection, hot-swaps the gateway after a change under
//! gateway/ with no failed request under a 4-client load, and on Ctrl-C
//! (SIGINT to its process group, as a terminal sends it) leaves no process,
//! control socket or listening port behind. The save -> first answer time
//! is printed, not asserted: it depends on the machine.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use integration_tests::*;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The script's process group, killed whatever happens to the test.
struct Dev {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Dev {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(started.elapsed() < limit, "no {needle:?} from scripts/dev within {limit:?}:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- scripts/dev -----\n{}----- end -----", self.log());
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", needle]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_serves_at_once_swaps_on_a_change_and_cleans_up() {
    binary("gateway"); // the harness's build: the same command scripts/dev runs
    let run_dir = tempfile::Builder::new().prefix("split-dev-").tempdir().expect("tempdir");
    let port = free_port();
    let log = run_dir.path().join("dev.log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(root().join("scripts/dev"))
        .env("PORT", port.to_string())
        .env("RUN_DIR", run_dir.path())
        .env("DEVICE", "cpu")
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting scripts/dev");
    let mut dev = Dev { child, log };

    // 1. Up without anyone connecting: the script says where it serves.
    let line = dev.wait_log(&format!("serving http://127.0.0.1:{port}"), Duration::from_secs(600)).await;
    println!("{line}");
    let base = format!("http://127.0.0.1:{port}");
    let live = reqwest::get(format!("{base}/health/live")).await.expect("GET /health/live");
    assert_eq!(live.status(), 200);
    let ready = async || reqwest::get(format!("{base}/health/ready")).await.is_ok_and(|r| r.status() == 200);
    assert!(eventually(Duration::from_secs(120), ready).await.is_some(), "the host never became ready");

    // 2. A 4-client load across one change and swap.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let body = testset("gray8").remove(0).bytes;
    let loads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, body) = (stop.clone(), ok.clone(), failed.clone(), body.clone());
            let url = format!("{base}/v1/models/digits/predict");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Relaxed) {
                    match client.post(&url).header("content-type", "image/png").body(body.clone()).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Relaxed),
                        _ => failed.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A save: the file's content stays (other tests build from this tree),
    // its mtime is what both scripts/dev and cargo look at.
    let saved = std::fs::File::options().write(true).open(root().join("gateway/src/lib.rs")).expect("opening lib.rs");
    saved.set_modified(SystemTime::now()).expect("touching gateway/src/lib.rs");
    let line = dev.wait_log("swapped to gateway", Duration::from_secs(600)).await;
    println!("{line}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    for load in loads {
        load.await.unwrap();
    }
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    println!("load across the swap: {ok} ok, {failed} failed");
    assert!(ok > 0, "no request succeeded");
    assert_eq!(failed, 0, "requests failed across the swap");

    // 3. Ctrl-C: everything stops, nothing is left.
    killpg(Pid::from_raw(dev.child.id() as i32), Signal::SIGINT).expect("SIGINT to the group");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = dev.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "scripts/dev did not exit within 30 s of Ctrl-C");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("scripts/dev exited ({status}) {:?} after Ctrl-C", started.elapsed());
    let run_dir_name = run_dir.path().display().to_string();
    let left = eventually(Duration::from_secs(5), async || processes_naming(&run_dir_name).is_empty()).await;
    assert!(left.is_some(), "processes left running: {:?}", processes_naming(&run_dir_name));
    assert!(!run_dir.path().join("model-host.sock").exists(), "the host's control socket was left behind");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts connections");
}
