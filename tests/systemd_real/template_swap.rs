//! The template phase of `systemd_real`: two `model-host@` instances and
//! `scripts/model-swap` between them under steady load.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use integration_tests::nspawn::Container;
use integration_tests::root;

use super::{BASE, Tally, http, steady_load, wait_count};

/// Two model-host@ instances: digits version 1 and version 2 (the same
/// weights, told apart by the version answers carry).
pub fn lay_out_template_instances(rootfs: &std::path::Path) {
    let models = rootfs.join("var/lib/model-host/models");
    let v2 = models.join("digits-2");
    std::fs::create_dir_all(&v2).expect("digits-2");
    std::fs::copy(models.join("digits/model.pt"), v2.join("model.pt")).expect("copying model.pt");
    let toml = std::fs::read_to_string(models.join("digits/model.toml")).expect("model.toml");
    std::fs::write(v2.join("model.toml"), toml.replace("version = \"1\"", "version = \"2\"")).expect("v2 model.toml");
    let env = rootfs.join("etc/model-host");
    std::fs::create_dir_all(&env).expect("etc/model-host");
    for (instance, dir) in [("digits-1", "digits"), ("digits-2", "digits-2")] {
        let text = format!("MODEL_HOST_MODEL=/var/lib/model-host/models/{dir}\nMODEL_HOST_DEVICE=cpu\n");
        std::fs::write(env.join(format!("{instance}.env")), text).expect("instance env file");
    }
}

/// model-host@.service and scripts/model-swap: version 1 in one instance,
/// then the documented swap to version 2 under steady load: no request
/// fails, answers move from version 1 to 2, the old instance drains and
/// exits 0. The script runs from outside the container, its systemctl,
/// journalctl and curl entered into it with nsenter.
pub fn template_swap_under_load_fails_nothing(c: &Container) {
    // The template phase above stopped gateway.socket: the usual gateway
    // again (it watches /run/model-host/hosts), started by a connection.
    c.sh_ok("systemctl start gateway.socket model-host@digits-1.service");
    let routed = http(c, |client| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if client.get(format!("{BASE}/v2/models/digits/versions/1/ready")).send().await.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    if !routed {
        let (_, seen) = c.sh("ls -la /run/model-host /run/model-host/hosts; systemctl list-units --no-pager 'gateway*' 'model-host*'; journalctl --no-pager -o cat -u 'gateway@*' | tail -n 30");
        panic!("the gateway never routed to model-host@digits-1:\n{seen}");
    }
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let (s, t) = (stop.clone(), tally.clone());
    let load = c.in_netns(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(steady_load(4, s, t));
    });
    wait_count(&tally.ok, 20, "answers from version 1");
    let pid = c.init_pid;
    let swapped = Command::new(root().join("scripts/model-swap"))
        .args(["digits-1", "digits-2", "--gateway", BASE, "--settle", "1"])
        .env("MODEL_SWAP_SYSTEMCTL", format!("nsenter -t {pid} -a systemctl"))
        .env("MODEL_SWAP_JOURNALCTL", format!("nsenter -t {pid} -a journalctl"))
        .env("MODEL_SWAP_CURL", format!("nsenter -t {pid} -n curl"))
        .output()
        .expect("running scripts/model-swap");
    let said = String::from_utf8_lossy(&swapped.stderr).into_owned();
    assert!(swapped.status.success(), "scripts/model-swap failed:\n{said}");
    let served = tally.ok.load(Relaxed);
    wait_count(&tally.ok, served + 20, "answers after the swap");
    stop.store(true, Relaxed);
    load.join().expect("load thread");
    let versions = tally.versions.lock().expect("tally").clone();
    let (ok, failed) = (tally.ok.load(Relaxed), tally.failed.load(Relaxed));
    println!("template swap: {ok} ok, {failed} failed, answers by version {versions:?}");
    assert_eq!(failed, 0, "requests failed across the swap: {:?}", tally.failures.lock().expect("tally"));
    assert_eq!(versions.keys().map(String::as_str).collect::<Vec<_>>(), ["1", "2"], "answered by version 1, then 2");
    assert_eq!(tally.last_version.lock().expect("tally").as_str(), "2", "the last answers come from version 2");
    let old = (c.property("model-host@digits-1.service", "ActiveState"), c.property("model-host@digits-1.service", "Result"));
    assert_eq!((old.0.as_str(), old.1.as_str()), ("inactive", "success"), "the old instance drained and exited 0");
    assert_eq!(c.property("model-host@digits-2.service", "ActiveState"), "active");
    // As the phase found things: gateway.service's Wants= started
    // model-host.service again.
    c.sh_ok("systemctl stop model-host@digits-2.service gateway.socket gateway-grpc.socket gateway.service model-host.service");
}
