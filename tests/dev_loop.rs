//! `scripts/dev` for real: it brings the host and the first gateway up with
//! no outside connection, hot-swaps the gateway after a change under
//! gateway/ with no failed request under a 4-client load, and on Ctrl-C
//! (SIGINT to its process group, as a terminal sends it) leaves no process,
//! control socket or listening port behind, within its stop limit even when
//! a rebuild is in progress. The save -> first answer time is printed, not
//! asserted: it depends on the machine.

use std::io::Write;
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

/// The tests here take turns: each starts a scripts/dev that rebuilds the
/// gateway, and one of them holds cargo's build lock.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// scripts/dev's own stop limit (`STOP_LIMIT_SECS`, set here to its default).
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Starts scripts/dev on `port` with its run directory in `run_dir`, on
/// the CPU, in a process group of its own (as a terminal would), and with
/// SIGINT ignored on entry, as a CI runner, `nohup` or a shell's `&` hands
/// it on: Ctrl-C must stop it all the same. (A shell can neither trap nor
/// reset a signal ignored at its start; scripts/dev re-executes itself with
/// SIGINT back at its default. Without that, each test here fails.)
fn start_dev(port: u16, run_dir: &std::path::Path) -> Dev {
    let log = run_dir.join("dev.log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new("sh")
        .args(["-c", "trap '' INT; exec \"$0\""])
        .arg(root().join("scripts/dev"))
        .env("PORT", port.to_string())
        .env("RUN_DIR", run_dir)
        .env("DEVICE", "cpu")
        .env("STOP_LIMIT_SECS", STOP_LIMIT.as_secs().to_string())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting scripts/dev");
    Dev { child, log }
}

/// A save: the file's content stays (other tests build from this tree);
/// its mtime is what both scripts/dev and cargo look at.
fn touch_gateway_source() {
    let saved = std::fs::File::options().write(true).open(root().join("gateway/src/lib.rs")).expect("opening lib.rs");
    saved.set_modified(SystemTime::now()).expect("touching gateway/src/lib.rs");
}

/// Ctrl-C, as a terminal sends it (SIGINT to the process group); then
/// checks that scripts/dev exits within `limit` and leaves nothing behind.
async fn ctrl_c_and_check_cleanup(dev: &mut Dev, run_dir: &std::path::Path, port: u16, limit: Duration) {
    killpg(Pid::from_raw(dev.child.id() as i32), Signal::SIGINT).expect("SIGINT to the group");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = dev.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(started.elapsed() < limit, "scripts/dev did not exit within {limit:?} of Ctrl-C");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("scripts/dev exited ({status}) {:?} after Ctrl-C", started.elapsed());
    let run_dir_name = run_dir.display().to_string();
    let left = eventually(Duration::from_secs(5), async || processes_naming(&run_dir_name).is_empty()).await;
    assert!(left.is_some(), "processes left running: {:?}", processes_naming(&run_dir_name));
    assert!(!run_dir.join("model-host.sock").exists(), "the host's control socket was left behind");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts connections");
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", needle]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_serves_at_once_swaps_on_a_change_and_cleans_up() {
    let _turn = SERIAL.lock().await;
    binary("gateway"); // the harness's build: model-host and the dependencies, before scripts/dev adds its dylib gateway
    let run_dir = tempfile::Builder::new().prefix("split-dev-").tempdir().expect("tempdir");
    let port = free_port();
    let mut dev = start_dev(port, run_dir.path());

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
    // What the first failures were, with when they happened, for the report.
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load_start = Instant::now();
    let body = testset("gray8").remove(0).bytes;
    let loads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, body, failures) = (stop.clone(), ok.clone(), failed.clone(), body.clone(), failures.clone());
            let url = format!("{base}/v1/models/digits/predict");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Relaxed) {
                    let what = match client.post(&url).header("content-type", "image/png").body(body.clone()).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Relaxed);
                            continue;
                        }
                        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => format!("{e:?}"),
                    };
                    failed.fetch_add(1, Relaxed);
                    let mut failures = failures.lock().expect("failures lock");
                    if failures.len() < 5 {
                        failures.push(format!("at {:?}: {what}", load_start.elapsed()));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    touch_gateway_source();
    let line = dev.wait_log("swapped to gateway", Duration::from_secs(600)).await;
    // Straight to stderr, past the test harness's capture (which takes only
    // the print macros' output): every suite run shows the figure.
    let _ = writeln!(std::io::stderr(), "dev_loop: {line}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    for load in loads {
        load.await.unwrap();
    }
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    println!("load across the swap: {ok} ok, {failed} failed");
    assert!(ok > 0, "no request succeeded");
    assert_eq!(failed, 0, "requests failed across the swap; the first: {:#?}\n{}", failures.lock().expect("failures lock"), dev.log());

    // 3. Ctrl-C: everything stops, nothing is left.
    ctrl_c_and_check_cleanup(&mut dev, run_dir.path(), port, STOP_LIMIT + Duration::from_secs(5)).await;
}

/// Ctrl-C while a rebuild is under way. The build is held at cargo's lock
/// on the build directory, which this test takes as a `cargo test` in
/// another terminal would: the rebuild then lasts until the lock is given
/// back, so Ctrl-C lands in it every time. A stop that waits for the build
/// never ends; scripts/dev must kill it and be gone within its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_rebuild_stops_within_the_limit() {
    let _turn = SERIAL.lock().await;
    binary("gateway");
    let run_dir = tempfile::Builder::new().prefix("split-dev-").tempdir().expect("tempdir");
    let port = free_port();
    let mut dev = start_dev(port, run_dir.path());
    dev.wait_log(&format!("serving http://127.0.0.1:{port}"), Duration::from_secs(600)).await;

    let lock_path = binary("gateway").parent().expect("target/<profile>").join(".cargo-lock");
    let lock_file = std::fs::File::options().read(true).write(true).create(true).truncate(false).open(&lock_path).expect("opening cargo's lock");
    let held = tokio::task::spawn_blocking(move || nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive))
        .await
        .expect("lock task")
        .map_err(|(_, e)| e)
        .expect("taking cargo's build-directory lock");
    touch_gateway_source();
    dev.wait_log("change seen; building", Duration::from_secs(30)).await;
    // The build is now waiting for the lock (or about to).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!dev.log().contains("swapped to gateway"), "the build finished while its lock was held:\n{}", dev.log());

    let build_group = std::fs::read_to_string(run_dir.path().join("build.pgid")).ok();

    ctrl_c_and_check_cleanup(&mut dev, run_dir.path(), port, STOP_LIMIT + Duration::from_secs(5)).await;
    if let Some(group) = build_group {
        let left = Command::new("pgrep").args(["-g", group.trim()]).output().expect("pgrep");
        assert!(left.stdout.is_empty(), "the build outlived the stop: {}", String::from_utf8_lossy(&left.stdout));
    }
    drop(held);
}

/// The names in a Cargo.toml's `[dependencies]` table.
fn dependency_names(manifest: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(manifest)).expect("reading a Cargo.toml");
    let parsed: toml::Table = text.parse().expect("a Cargo.toml parses");
    parsed.get("dependencies").and_then(toml::Value::as_table).map(|deps| deps.keys().cloned().collect()).unwrap_or_default()
}

/// scripts/dev's gateway links every dependency from gateway/dylib: one the
/// library does not name would be linked statically again on each save.
#[test]
fn the_dev_librarys_crates_are_the_gateways() {
    let mut gateway = dependency_names("gateway/Cargo.toml");
    assert!(gateway.remove("gateway-dylib"), "the gateway's optional dylib dependency is gone");
    let library = dependency_names("gateway/dylib/Cargo.toml");
    assert_eq!(gateway, library, "gateway/Cargo.toml and gateway/dylib/Cargo.toml name other dependencies");
    let source = std::fs::read_to_string(root().join("gateway/dylib/src/lib.rs")).expect("reading gateway/dylib/src/lib.rs");
    for name in &library {
        let used = format!("pub use {};", name.replace('-', "_"));
        assert!(source.contains(&used), "gateway/dylib/src/lib.rs lacks `{used}`");
    }
}
