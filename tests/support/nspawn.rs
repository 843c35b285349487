//! A throwaway container with a real systemd as PID 1 (`systemd-nspawn`),
//! for tests that run the project's units under systemd itself.
//!
//! The root filesystem is Debian bookworm with systemd and dbus, made once by
//! `scripts/nspawn-rootfs` (cached as a tarball in `.cache/`), unpacked into
//! a temporary directory per container and filled by `scripts/install-systemd
//! --root` there. The host has no systemd, so nspawn runs unregistered
//! (`--register=no --keep-unit`) inside cgroup directories made here, which
//! [`Container`]'s `Drop` removes again, whatever the test's outcome.
//! `--private-network` gives the container its own loopback, so its ports
//! never collide with anything on the machine; HTTP reaches it from a thread
//! that joined its network namespace ([`Container::in_netns`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::root;

/// Why containers cannot run on this machine, or None when they can: the
/// test then says so (`SKIPPED: ...`) instead of passing silently.
pub fn why_not() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (systemd-nspawn needs root)".into());
    }
    for tool in ["systemd-nspawn", "nsenter", "tar"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} is not installed (scripts/setup installs systemd-container)"));
        }
    }
    if Path::new("/run/systemd/system").exists() {
        return Some("the host runs systemd: nspawn would need a delegated scope, which this test does not set up".into());
    }
    let roots = cgroup_roots();
    if roots.is_empty() {
        return Some("no cgroup file system under /sys/fs/cgroup".into());
    }
    for base in roots {
        let probe = base.join(format!("{CGROUP_PREFIX}{}-probe", std::process::id()));
        if let Err(e) = std::fs::create_dir(&probe) {
            return Some(format!("cannot make a cgroup under {}: {e}", base.display()));
        }
        let _ = std::fs::remove_dir(&probe);
    }
    None
}

/// Where the container's cgroup directories go: the unified (v2) tree and,
/// on a hybrid host, the named systemd v1 tree as well.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let candidates: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
        vec![base.to_path_buf()]
    } else {
        vec![base.join("unified"), base.join("systemd")]
    };
    candidates.into_iter().filter(|p| p.join("cgroup.procs").exists()).collect()
}

/// A booted container; stopped and cleaned up on drop.
pub struct Container {
    /// The container's PID 1 (its systemd), as this machine numbers it.
    pub init_pid: u32,
    /// systemd-nspawn itself.
    nspawn: Child,
    /// This container's cgroup directories, removed on drop.
    cgroups: Vec<PathBuf>,
    /// nspawn's output: the container's console.
    console: PathBuf,
    /// Holds the unpacked root filesystem and the console log.
    _dir: tempfile::TempDir,
}

impl Container {
    /// Unpacks the cached root filesystem, lets `prepare` lay files out in it,
    /// and boots it with `binds` (`host path`, `container path`) read-only.
    pub fn boot(prepare: impl FnOnce(&Path), binds: &[(PathBuf, &str)]) -> Container {
        sweep_stale_containers();
        let dir = tempfile::Builder::new().prefix(&format!("{DIR_PREFIX}{}-", std::process::id())).tempdir().expect("tempdir");
        let rootfs = dir.path().join("root");
        std::fs::create_dir(&rootfs).expect("mkdir root");
        let tarball = rootfs_tarball();
        run_ok(Command::new("tar").arg("-C").arg(&rootfs).arg("-xf").arg(&tarball));
        prepare(&rootfs);

        // Unique per process: other test runs may boot containers meanwhile.
        let name = format!("{CGROUP_PREFIX}{}", std::process::id());
        let cgroups: Vec<PathBuf> = cgroup_roots().into_iter().map(|r| r.join(&name)).collect();
        for cg in &cgroups {
            std::fs::create_dir_all(cg).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cg.display()));
        }
        let console = dir.path().join("console.log");
        let nspawn = spawn_nspawn(&name, &rootfs, &cgroups, binds, &console);
        let mut container = Container { init_pid: 0, nspawn, cgroups, console, _dir: dir };
        container.init_pid = container.wait_for_init();
        container.wait_booted();
        container
    }

    /// Finds nspawn's child, the container's systemd.
    fn wait_for_init(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = child_of(self.nspawn.id()) {
                return pid;
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}) before booting:\n{}", self.console_log());
            }
            assert!(Instant::now() < deadline, "no container init after 60 s:\n{}", self.console_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the container's systemd has finished booting.
    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = self.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            match state.as_str() {
                "running" => return,
                "degraded" => {
                    let failed = self.run(&["systemctl", "--failed", "--no-pager"]);
                    eprintln!("container booted degraded:\n{}", String::from_utf8_lossy(&failed.stdout));
                    return;
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "container still {state:?} after 90 s:\n{}", self.console_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a command in all of the container's namespaces, as its root.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.init_pid.to_string())
            .arg("-a")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// Runs a shell script in the container; whether it succeeded, and its
    /// stdout and stderr together.
    pub fn sh(&self, script: &str) -> (bool, String) {
        let out = self.run(&["/bin/sh", "-c", script]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Like [`Container::sh`], but the script must succeed; its output.
    pub fn sh_ok(&self, script: &str) -> String {
        let (ok, text) = self.sh(script);
        assert!(ok, "in the container, `{script}` failed:\n{text}");
        text
    }

    /// `systemctl show -p ...` of a unit, as (name, value) pairs.
    pub fn show(&self, unit: &str, properties: &str) -> Vec<(String, String)> {
        let out = self.sh_ok(&format!("systemctl show -p {properties} {unit}"));
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One property of a unit.
    pub fn property(&self, unit: &str, property: &str) -> String {
        self.show(unit, property).into_iter().find(|(k, _)| k == property).map(|(_, v)| v).unwrap_or_default()
    }

    /// Polls a unit's state until `done` holds for it; the properties then.
    /// Generous `limit`s: the machine may be loaded, and polling costs nothing.
    pub fn wait_unit(&self, unit: &str, limit: Duration, done: impl Fn(&UnitState) -> bool) -> UnitState {
        let deadline = Instant::now() + limit;
        loop {
            let state = UnitState::from(self.show(unit, "ActiveState,SubState,NRestarts,MainPID,StatusText,Result"));
            if done(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "{unit}: condition not met within {limit:?}; last: {state:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A unit's journal, message text only.
    pub fn journal(&self, unit: &str) -> String {
        self.sh_ok(&format!("journalctl --no-pager -o cat -u {unit}"))
    }

    /// Runs `job` on a new thread inside the container's network namespace:
    /// every socket it opens is on the container's loopback.
    pub fn in_netns<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> std::thread::JoinHandle<R> {
        let ns = File::open(format!("/proc/{}/ns/net", self.init_pid)).expect("opening the container's netns");
        std::thread::spawn(move || {
            // Only this thread moves; the rest of the test stays where it is.
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the container's network namespace");
            job()
        })
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

/// What `systemctl show` says of a unit's state.
#[derive(Debug, Clone, Default)]
pub struct UnitState {
    pub active: String,
    pub sub: String,
    pub restarts: u32,
    pub main_pid: u32,
    pub status_text: String,
    pub result: String,
}

impl From<Vec<(String, String)>> for UnitState {
    fn from(props: Vec<(String, String)>) -> Self {
        let mut s = UnitState::default();
        for (k, v) in props {
            match k.as_str() {
                "ActiveState" => s.active = v,
                "SubState" => s.sub = v,
                "NRestarts" => s.restarts = v.parse().unwrap_or(0),
                "MainPID" => s.main_pid = v.parse().unwrap_or(0),
                "StatusText" => s.status_text = v,
                "Result" => s.result = v,
                _ => {}
            }
        }
        s
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (_, journal) = self.sh("journalctl --no-pager -o short-monotonic -n 150 -u model-host -u 'gateway*'");
            eprintln!("----- container journal (last lines) -----\n{journal}\n----- container console -----");
            eprintln!("{}----- end of container -----", self.console_log());
        }
        self.power_off();
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
    }
}

impl Container {
    /// SIGTERM asks nspawn to halt the container cleanly; a second SIGTERM
    /// ends it at once; SIGKILL if even that hangs.
    fn power_off(&mut self) {
        let pid = Pid::from_raw(self.nspawn.id() as i32);
        for (signal, wait) in [(Signal::SIGTERM, 20), (Signal::SIGTERM, 5), (Signal::SIGKILL, 5)] {
            let _ = kill(pid, signal);
            let deadline = Instant::now() + Duration::from_secs(wait);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.nspawn.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.nspawn.wait();
    }
}

/// This module's cgroups and temporary directories are named with these
/// prefixes, then the test process's pid.
const CGROUP_PREFIX: &str = "split-serve-test-";
const DIR_PREFIX: &str = "split-nspawn-";

/// A test process killed outright (a CI timeout, SIGKILL) never ran its
/// `Drop`: what its container left, named after a pid that is gone, is
/// removed here. Killing the cgroup ends nspawn too (it lives there), which
/// releases the root filesystem's mounts before the directory goes.
fn sweep_stale_containers() {
    let dead = |name: &str, prefix: &str| {
        let pid = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let stale = |dir: &Path, prefix: &str| -> Vec<PathBuf> {
        let entries = std::fs::read_dir(dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        entries.into_iter().filter(|e| dead(&e.file_name().to_string_lossy(), prefix)).map(|e| e.path()).collect()
    };
    for cgroup in cgroup_roots().iter().flat_map(|base| stale(base, CGROUP_PREFIX)) {
        eprintln!("removing a stale test container's cgroup {}", cgroup.display());
        remove_cgroup(&cgroup);
    }
    for dir in stale(&std::env::temp_dir(), DIR_PREFIX) {
        eprintln!("removing a stale test container's root {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Removes a cgroup tree, deepest first; kills what is left in it first.
fn remove_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("find").arg(cg).args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"]).output();
        if !cg.exists() || Instant::now() > deadline {
            if cg.exists() {
                eprintln!("could not remove cgroup {}: {out:?}", cg.display());
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cached root filesystem tarball (made by scripts/nspawn-rootfs).
fn rootfs_tarball() -> PathBuf {
    let out = Command::new(root().join("scripts/nspawn-rootfs")).stderr(Stdio::inherit()).output().expect("scripts/nspawn-rootfs");
    assert!(out.status.success(), "scripts/nspawn-rootfs failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Starts nspawn in `cgroups` (a shell moves itself there, then execs it).
fn spawn_nspawn(name: &str, rootfs: &Path, cgroups: &[PathBuf], binds: &[(PathBuf, &str)], console: &Path) -> Child {
    let log = File::create(console).expect("console log");
    let script = r#"for cg in $CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 97; done; exec systemd-nspawn "$@""#;
    let cgroup_list: Vec<String> = cgroups.iter().map(|c| c.display().to_string()).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script, "sh"])
        .args(["--quiet", "--register=no", "--keep-unit", "--private-network", "--volatile=overlay"])
        .args(["--console=pipe", "--system-call-filter=bpf", "--boot"])
        .arg(format!("--machine={name}"))
        .arg("--directory")
        .arg(rootfs);
    for (host, inside) in binds {
        cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
    }
    // Without both, DeviceAllow= and IPAddressDeny= are silently not enforced.
    cmd.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .env("CGROUPS", cgroup_list.join(" "))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("starting systemd-nspawn")
}

/// The child of `parent` that has become systemd (nspawn forks helpers too).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (ppid == parent && comm.trim() == "systemd").then_some(pid)
    })
}

/// Runs a host command that must succeed.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}
