//! A host restarted inside a pod: its container has a PID namespace of its
//! own, so the host is pid 1 again after every restart, while the pod's
//! /dev/shm (an `emptyDir`) outlives the container. Segments that a killed
//! pid-1 host left there carry "its own" pid, and its start-up sweep must
//! remove them anyway (deploy/kubernetes/deployment.yaml relies on it).
//! Played here with `unshare --pid`; needs root, else it says so and skips.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use integration_tests::*;

#[tokio::test]
async fn a_host_that_is_pid_1_again_sweeps_what_its_predecessor_left() {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        let _ = writeln!(std::io::stderr(), "pod_restart: SKIPPED: cannot make a PID namespace here (needs root)");
        return;
    }
    // What a pid-1 host killed mid-handshake leaves: a segment named after
    // pid 1 (the connection number is ours, so that nothing else owns it).
    let stale = format!("/dev/shm/model-host.1.{}", 4_000_000_000u64 + u64::from(std::process::id()));
    std::fs::write(&stale, vec![0u8; 4096]).expect("writing the stale segment");

    let scratch = Scratch::new();
    let host_binary = binary("model-host").display().to_string();
    let args = [
        "--pid",
        "--fork",
        "--kill-child",
        &host_binary,
        "--socket",
        &scratch.socket().display().to_string(),
        "--model",
        &digits_model().display().to_string(),
        "--device",
        "cpu",
        "--cpu-threads",
        "1",
    ]
    .map(String::from);
    let log = scratch.dir.path().join("host.log");
    let host = Process::spawn("model-host (pid 1)", Path::new("unshare"), &args, &[], log);
    let gone = eventually(Duration::from_secs(30), async || !Path::new(&stale).exists()).await;
    let _ = std::fs::remove_file(&stale);
    assert!(gone.is_some(), "the pid-1 host left its predecessor's segment in place; log:\n{}", host.log());
    assert!(host.log().contains("removed stale shared-memory segment"), "{}", host.log());
}
