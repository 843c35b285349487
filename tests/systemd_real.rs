//! The units under a real systemd: a Debian container booted by
//! systemd-nspawn, with the binaries, the default model, the units,
//! sysusers.d and tmpfiles.d laid out by `scripts/install-systemd --root`
//! (debug binaries, libtorch bind-mounted read-only where the unit's drop-in
//! points). One boot, then in order: the host's start (Type=notify), socket
//! activation, the hardening of the running services, gateway restarts under
//! load, the watchdog, the template sockets, a clean stop, a model swap
//! between two `model-host@` instances with `scripts/model-swap` under load,
//! a failed start.
//! Without root, nspawn or a cgroup file system it prints `SKIPPED: <why>`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[path = "systemd_real/template_swap.rs"]
mod template_swap;

use integration_tests::nspawn::{self, Container, UnitState, run_ok};
use template_swap::{lay_out_template_instances, template_swap_under_load_fails_nothing};
use integration_tests::*;

/// Where the container sees the host's torch site-packages (libtorch and the
/// CUDA libraries its RUNPATH reaches through `../../nvidia`).
const SITE_PACKAGES: &str = "/opt/split-serve/site-packages";
const BASE: &str = "http://127.0.0.1:8080";
const HOST: &str = "model-host.service";
const GATEWAY: &str = "gateway.service";

/// Test-only additions to the host's unit, on top of what install-systemd
/// lays out: WatchdogSec=3 instead of 30 so a frozen host is caught within
/// seconds, and a probe that systemd runs inside the unit's own sandbox
/// (same user, namespaces, seccomp filters) once the host is ready; `-` so
/// its findings never fail the unit.
const HOST_TEST_DROP_IN: &str = "[Service]\nWatchdogSec=3\nExecStartPost=-/usr/local/libexec/split-serve-probe\n";
const PROBE: &str = r#"#!/bin/bash
echo "probe: user $(id -un) group $(id -gn)"
echo "probe: inet: $( (exec 3<>/dev/tcp/127.0.0.1/9) 2>&1 )"
echo "probe: usr: $(touch /usr/probe 2>&1)"
"#;

#[test]
fn units_run_under_a_real_systemd() {
    if let Some(why) = nspawn::why_not() {
        println!("SKIPPED: {why}");
        eprintln!("SKIPPED: systemd_real: {why}");
        return;
    }
    let started = Instant::now();
    let c = boot();
    println!("container booted after {:?}", started.elapsed());
    host_reports_each_phase_then_ready(&c);
    first_connection_starts_the_gateway(&c);
    hardening_holds_for_the_running_services(&c);
    gateway_restarts_under_load_drop_nothing(&c);
    watchdog_restarts_a_frozen_host(&c);
    template_sockets_share_the_port(&c);
    host_stops_cleanly(&c);
    template_swap_under_load_fails_nothing(&c);
    bad_config_fails_and_restarts_on_failure(&c);
    println!("systemd_real: all phases in {:?}", started.elapsed());
}

/// Lays the files out as install-systemd does, plus the test drop-in.
fn boot() -> Container {
    digits_model();
    let bin_dir = binary("model-host").parent().expect("target dir").to_path_buf();
    let torch = std::fs::canonicalize(root().join(".venv/torch")).expect(".venv/torch: run scripts/setup first");
    let site_packages: PathBuf = torch.parent().expect("torch lives in site-packages").to_path_buf();
    Container::boot(
        |rootfs| {
            run_ok(
                Command::new(root().join("scripts/install-systemd"))
                    .arg("--root")
                    .arg(rootfs)
                    .arg("--binaries")
                    .arg(&bin_dir)
                    .arg("--libtorch")
                    .arg(format!("{SITE_PACKAGES}/torch/lib")),
            );
            lay_out_template_instances(rootfs);
            let drop_in = rootfs.join("etc/systemd/system/model-host.service.d/test.conf");
            std::fs::write(drop_in, HOST_TEST_DROP_IN).expect("test drop-in");
            let probe = rootfs.join("usr/local/libexec/split-serve-probe");
            std::fs::create_dir_all(probe.parent().expect("libexec")).expect("mkdir libexec");
            std::fs::write(&probe, PROBE).expect("probe");
            run_ok(Command::new("chmod").arg("755").arg(&probe));
        },
        &[(site_packages, SITE_PACKAGES)],
    )
}

/// Runs an async job with a fresh HTTP client inside the container's network.
fn http<R: Send + 'static, Fut: Future<Output = R>>(c: &Container, job: impl FnOnce(reqwest::Client) -> Fut + Send + 'static) -> R {
    c.in_netns(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(async move { job(client()).await })
    })
    .join()
    .expect("HTTP thread in the container's network")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

fn sample() -> Sample {
    testset("gray8").remove(0)
}

/// Polls /health/ready until 200; its body.
async fn wait_ready(client: &reqwest::Client) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{BASE}/health/ready")).send().await
            && r.status() == 200
        {
            return r.json().await.expect("ready body");
        }
        assert!(Instant::now() < deadline, "gateway not ready within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Type=notify: `activating` with a STATUS line per phase, `active` only
/// after READY=1. systemd logs each notification it receives at debug level,
/// so the journal shows the order as systemd saw it, without racing a poll.
fn host_reports_each_phase_then_ready(c: &Container) {
    c.sh_ok("systemctl log-level debug");
    c.sh_ok(&format!("systemctl start --no-block {HOST}"));
    let state = c.wait_unit(HOST, Duration::from_secs(180), |s| s.active == "active" || s.active == "failed");
    c.sh_ok("systemctl log-level info");
    assert_eq!(state.active, "active", "{state:?}\n{}", c.journal(HOST));
    assert!(state.status_text.starts_with("ready (ms since start"), "{state:?}");

    let journal = c.journal(HOST);
    let events: Vec<&str> =
        journal.lines().filter(|l| l.contains("Got notification message") || l.contains(": Changed ")).collect();
    let at = |needle: &str| {
        events.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in:\n{}", events.join("\n")))
    };
    let warming: Vec<usize> = (0..events.len()).filter(|&i| events[i].contains("STATUS=warming ")).collect();
    let (activating, loading, ready, running) =
        (at("Changed dead -> start"), at("STATUS=loading weights"), at("READY=1"), at("-> running"));
    assert!(warming.len() >= 2, "expected a STATUS line per warm-up pass:\n{}", events.join("\n"));
    assert!(activating < loading && loading < warming[0], "{}", events.join("\n"));
    assert!(*warming.last().expect("warming") < ready && ready < running, "{}", events.join("\n"));
    println!("host: {} notifications before READY=1 ({} warm-up passes); {}", ready - activating, warming.len(), state.status_text);
}

/// gateway.socket holds the port; the first connection starts the service.
fn first_connection_starts_the_gateway(c: &Container) {
    c.sh_ok("systemctl start gateway.socket");
    assert_eq!(c.property(GATEWAY, "ActiveState"), "inactive", "gateway.service started before any connection");
    let live = http(c, |client| async move { client.get(format!("{BASE}/health/live")).send().await.map(|r| r.status()) });
    assert_eq!(live.expect("first connection").as_u16(), 200);
    c.wait_unit(GATEWAY, Duration::from_secs(30), |s| s.active == "active");
    let sample = sample();
    let (status, body) = http(c, |client| async move {
        wait_ready(&client).await;
        let (status, _, body) = post_image(&client, &format!("{BASE}/v1/models/digits/predict"), sample.bytes, "image/png").await;
        (status, body)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(top_label(&body), sample.label, "{body}");
}

/// Numbers of a `/proc/PID/status` line, e.g. "Uid" -> ["997", "997", ...].
fn proc_field(c: &Container, pid: u32, field: &str) -> Vec<String> {
    let text = c.sh_ok(&format!("cat /proc/{pid}/status"));
    let line = text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().map(str::to_string).collect()
}

fn assert_no_capabilities(c: &Container, pid: u32, who: &str) {
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_field(c, pid, field), ["0000000000000000"], "{who}: {field}");
    }
    assert_eq!(proc_field(c, pid, "NoNewPrivs"), ["1"], "{who}");
    assert_eq!(proc_field(c, pid, "Seccomp"), ["2"], "{who}: no seccomp filter");
}

fn id(c: &Container, args: &str) -> String {
    c.sh_ok(&format!("id {args}")).trim().to_string()
}

/// The unit files' settings really apply to the running processes.
fn hardening_holds_for_the_running_services(c: &Container) {
    let host = c.wait_unit(HOST, Duration::from_secs(10), |s| s.main_pid != 0).main_pid;
    let gateway = c.wait_unit(GATEWAY, Duration::from_secs(10), |s| s.main_pid != 0).main_pid;
    let host_uid = id(c, "-u model-host");
    assert_eq!(proc_field(c, host, "Uid")[..], [&host_uid[..]; 4], "the host runs as model-host");
    assert_no_capabilities(c, host, "model-host");
    // Inside the host's own mount and network namespaces (even as root here).
    let (ok, out) = c.sh(&format!("nsenter -t {host} -m touch /usr/probe"));
    assert!(!ok && out.contains("Read-only file system"), "/usr writable for the host: {out}");
    let devices = c.sh_ok(&format!("nsenter -t {host} -n cat /proc/net/dev"));
    let interfaces: Vec<&str> = devices.lines().filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim()).collect();
    assert_eq!(interfaces, ["lo"], "the host's network namespace");
    // What systemd's probe, run in the unit's sandbox, found.
    let journal = c.journal(HOST);
    let probe = |what: &str| journal.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what:?}:\n{journal}"));
    assert_eq!(probe("probe: user"), "probe: user model-host group model-host");
    assert!(probe("probe: inet:").contains("Address family not supported"), "AF_INET allowed: {}", probe("probe: inet:"));
    assert!(probe("probe: usr:").contains("Read-only file system"), "{}", probe("probe: usr:"));
    devices_are_closed_in_the_hosts_cgroup(c);

    assert_eq!(proc_field(c, gateway, "Uid")[0], id(c, "-u gateway"), "the gateway runs as gateway");
    assert!(proc_field(c, gateway, "Groups").contains(&id(c, "-g model-host")), "gateway lacks the model-host group");
    assert_no_capabilities(c, gateway, "gateway");
    gateway_reaches_the_host_only_through_its_group(c, host);
    exposure_matches_the_offline_figure(c);
}

/// DevicePolicy=closed is a BPF program on the unit's cgroup: even root,
/// once in that cgroup, cannot open /dev/net/tun (only the pseudo devices
/// such as /dev/null stay allowed); outside it, root can.
fn devices_are_closed_in_the_hosts_cgroup(c: &Container) {
    let cgroup = c.property(HOST, "ControlGroup");
    let open = "for d in /dev/net/tun /dev/null; do echo \"$d: $( (exec 3<>$d) 2>&1 && echo opened)\"; done";
    let inside = c.sh_ok(&format!("echo $$ > /sys/fs/cgroup{cgroup}/cgroup.procs && exec bash -c '{open}'"));
    assert!(inside.contains("/dev/net/tun: Operation not permitted"), "{inside}");
    assert!(inside.contains("/dev/null: opened"), "{inside}");
    let outside = c.sh_ok(&format!("exec bash -c '{open}'"));
    assert!(outside.contains("/dev/net/tun: opened"), "the control case: {outside}");
}

fn gateway_reaches_the_host_only_through_its_group(c: &Container, host: u32) {
    let modes = c.sh_ok("stat -c '%n %U:%G %a' /run/model-host /run/model-host/control.sock");
    assert_eq!(modes.trim(), "/run/model-host model-host:model-host 750\n/run/model-host/control.sock model-host:model-host 660");
    // The gateway's segments, mapped by the host (their names are already unlinked).
    let segments = c.sh_ok(&format!(
        "for f in /proc/{host}/map_files/*; do case $(readlink $f) in /dev/shm/model-host.*) stat -L -c '%U:%G %a' $f;; esac; done | sort -u"
    ));
    assert_eq!(segments.trim(), "model-host:model-host 660", "segments mapped by the host");
    let as_gateway = |groups: &str| c.sh(&format!("setpriv --reuid=gateway --regid=gateway {groups} test -w /run/model-host/control.sock"));
    assert!(as_gateway("--init-groups").0, "the gateway user cannot reach the control socket");
    assert!(!as_gateway("--clear-groups").0, "the socket is reachable without the model-host group");
}

fn exposure(text: &str) -> f64 {
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no exposure in {text}"));
    line.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("no score in {line:?}"))
}

/// `systemd-analyze security` of the running units equals the offline
/// figure that tests/systemd_units.rs bounds.
fn exposure_matches_the_offline_figure(c: &Container) {
    for unit in [HOST, GATEWAY] {
        let online = exposure(&c.sh_ok(&format!("systemd-analyze security --no-pager {unit}")));
        let offline = exposure(&run_ok(
            Command::new("systemd-analyze").args(["security", "--offline=true", &format!("./{unit}")]).current_dir(root().join("systemd")),
        ));
        println!("{unit}: exposure {online} running, {offline} offline");
        assert_eq!(online, offline, "{unit}: exposure differs between the running unit and the offline analysis");
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// The first few failures, for the assertion's message.
    failures: std::sync::Mutex<Vec<String>>,
    /// Answers by the model version that gave them, and the latest one's.
    versions: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    last_version: std::sync::Mutex<String>,
}

/// Closed-loop keep-alive clients, each with its own connection pool, until `stop`.
async fn steady_load(clients: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let body = sample().bytes;
    let url = format!("{BASE}/v1/models/digits/predict");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, body, url, stop, tally) = (client(), body.clone(), url.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let answer = client.post(&url).header("content-type", "image/png").body(body.clone()).send().await;
                    let failure = match answer {
                        Ok(r) if r.status() != 200 => Some(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                        Ok(r) => match r.json::<serde_json::Value>().await {
                            Ok(answer) => {
                                let version = answer["version"].as_str().unwrap_or_default().to_string();
                                *tally.versions.lock().expect("tally").entry(version.clone()).or_default() += 1;
                                *tally.last_version.lock().expect("tally") = version;
                                None
                            }
                            Err(e) => Some(format!("reading the answer: {e}")),
                        },
                        Err(e) => Some(format!("{e:?}")),
                    };
                    match failure {
                        None => tally.ok.fetch_add(1, Relaxed),
                        Some(what) => {
                            tally.failures.lock().expect("tally").push(what);
                            tally.failed.fetch_add(1, Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
}

/// Waits until `count` reaches `target`.
fn wait_count(count: &AtomicUsize, target: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Relaxed) < target {
        assert!(Instant::now() < deadline, "{what}: {} of {target} within 60 s", count.load(Relaxed));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `systemctl restart gateway.service` five times under steady load: the
/// socket stays with systemd, so no request fails.
fn gateway_restarts_under_load_drop_nothing(c: &Container) {
    const CLIENTS: usize = 4;
    const RESTARTS: usize = 5;
    const EACH_GATEWAY_SERVES: usize = 20;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let (s, t) = (stop.clone(), tally.clone());
    let load = c.in_netns(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(steady_load(CLIENTS, s, t));
    });
    wait_count(&tally.ok, EACH_GATEWAY_SERVES, "answers before the first restart");
    let mut pids = vec![c.property(GATEWAY, "MainPID")];
    for _ in 0..RESTARTS {
        let served = tally.ok.load(Relaxed);
        c.sh_ok(&format!("systemctl restart {GATEWAY}"));
        let previous: u32 = pids.last().expect("a pid").parse().expect("MainPID");
        let now = c.wait_unit(GATEWAY, Duration::from_secs(30), |s| s.active == "active" && s.main_pid != 0 && s.main_pid != previous);
        pids.push(now.main_pid.to_string());
        // The new gateway serves before the next restart.
        wait_count(&tally.ok, served + EACH_GATEWAY_SERVES, "answers after a restart");
    }
    stop.store(true, Relaxed);
    load.join().expect("load thread");
    let (ok, failed) = (tally.ok.load(Relaxed), tally.failed.load(Relaxed));
    println!("gateway restarts: {RESTARTS} under {CLIENTS} keep-alive clients: {ok} ok, {failed} failed; MainPIDs {pids:?}");
    assert_eq!(failed, 0, "requests failed across restarts: {:?}", tally.failures.lock().expect("tally"));
}

/// A frozen host stops pinging; systemd kills it and starts a new one, and
/// the gateway reconnects to it.
fn watchdog_restarts_a_frozen_host(c: &Container) {
    let before = c.wait_unit(HOST, Duration::from_secs(10), |s| s.active == "active");
    assert_eq!(before.restarts, 0, "{before:?}");
    c.sh_ok(&format!("kill -STOP {}", before.main_pid));
    let frozen = Instant::now();
    let after = c.wait_unit(HOST, Duration::from_secs(180), |s: &UnitState| {
        s.active == "active" && s.main_pid != 0 && s.main_pid != before.main_pid
    });
    println!("watchdog: frozen host {} replaced by {} after {:?}", before.main_pid, after.main_pid, frozen.elapsed());
    assert_eq!(after.restarts, 1, "{after:?}");
    let journal = c.journal(HOST);
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    assert!(journal.contains("Failed with result 'watchdog'"), "{journal}");
    let (sample, new_pid) = (sample(), after.main_pid);
    let (host, status) = http(c, move |client| async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        // Ready again, and on the new host.
        let host = loop {
            wait_ready(&client).await;
            let hosts: serde_json::Value = match client.get(format!("{BASE}/v1/hosts")).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            let host = hosts["hosts"].as_array().into_iter().flatten().find(|h| h["phase"] == "ready").cloned().unwrap_or_default();
            if host["host_pid"] == new_pid || Instant::now() > deadline {
                break host;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (status, _, _) = post_image(&client, &format!("{BASE}/v1/models/digits/predict"), sample.bytes, "image/png").await;
        (host, status)
    });
    assert_eq!(host["host_pid"], after.main_pid, "{host}");
    assert_eq!(status, 200);
}

/// gateway@1.socket and gateway@2.socket listen on one port (SO_REUSEPORT);
/// connections start both instances.
fn template_sockets_share_the_port(c: &Container) {
    // gateway.service's two sockets (HTTP and gRPC) hold the ports without
    // SO_REUSEPORT: the instances take over from it, not beside it.
    c.sh_ok("systemctl stop gateway.socket gateway-grpc.socket gateway.service");
    c.sh_ok("systemctl start gateway@1.socket gateway@2.socket");
    let listeners = c.sh_ok("grep -c ': 0100007F:1F90 00000000:0000 0A ' /proc/net/tcp");
    assert_eq!(listeners.trim(), "2", "listeners on 127.0.0.1:8080");
    let active = |i: u32| c.property(&format!("gateway@{i}.service"), "ActiveState") == "active";
    let mut requests = 0;
    // The kernel hashes each new connection to one socket: fresh connections
    // reach both soon (missing one of them 20 times in a row: 1 in 10^6).
    while !(active(1) && active(2)) {
        assert!(requests < 400, "{requests} connections did not start both instances");
        let statuses = http(c, |_| async move {
            let fresh = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().expect("client");
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(fresh.get(format!("{BASE}/health/live")).send().await.map(|r| r.status().as_u16()).ok());
            }
            statuses
        });
        assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
        requests += statuses.len();
    }
    println!("template sockets: both instances started after {requests} connections");
    c.sh_ok("systemctl stop gateway@1.socket gateway@2.socket gateway-grpc@1.socket gateway-grpc@2.socket gateway@1.service gateway@2.service");
}

/// SIGTERM from `systemctl stop`: the host drains and exits 0 (systemd logs
/// a clean exit's status at debug level only).
fn host_stops_cleanly(c: &Container) {
    let seen = c.journal(HOST).lines().count();
    c.sh_ok("systemctl log-level debug");
    c.sh_ok(&format!("systemctl stop {HOST}"));
    c.sh_ok("systemctl log-level info");
    let (active, result) = (c.property(HOST, "ActiveState"), c.property(HOST, "Result"));
    assert_eq!((active.as_str(), result.as_str()), ("inactive", "success"));
    let journal: Vec<String> = c.journal(HOST).lines().skip(seen).map(str::to_string).collect();
    let at = |needle: &str| journal.iter().position(|l| l.contains(needle));
    let (draining, exited) = (at("draining"), at("Main process exited, code=exited, status=0/SUCCESS"));
    assert!(draining.is_some() && exited.is_some() && draining < exited, "{}", journal.join("\n"));
}

/// A bad model.toml: exit status 1, the error in the journal, restarted by
/// Restart=on-failure until the start limit, then `failed`. (The limit is
/// lowered for this phase only, so the end comes at a known point.)
fn bad_config_fails_and_restarts_on_failure(c: &Container) {
    let toml = "/var/lib/model-host/models/digits/model.toml";
    c.sh_ok(&format!("sed -i 's/^max_batch_size = 32/max_batch_size = \"lots\"/' {toml} && grep -q lots {toml}"));
    c.sh_ok(
        "printf '[Unit]\\nStartLimitIntervalSec=600\\nStartLimitBurst=3\\n' > /etc/systemd/system/model-host.service.d/start-limit.conf \
         && systemctl daemon-reload && systemctl reset-failed",
    );
    let seen = c.journal(HOST).lines().count();
    c.sh_ok(&format!("systemctl start --no-block {HOST}"));
    let state = c.wait_unit(HOST, Duration::from_secs(180), |s| s.active == "failed");
    assert_eq!(c.property(HOST, "ExecMainStatus"), "1", "{state:?}");
    let journal: Vec<String> = c.journal(HOST).lines().skip(seen).map(str::to_string).collect();
    let count = |needle: &str| journal.iter().filter(|l| l.contains(needle)).count();
    let text = journal.join("\n");
    let error = journal.iter().find(|l| l.starts_with("Error: parsing")).unwrap_or_else(|| panic!("no error in the journal:\n{text}"));
    assert!(error.contains(toml), "the error names the file: {error}");
    assert!(count("max_batch_size = \"lots\"") >= 1 && count("invalid type: string \"lots\", expected u32") >= 1, "{text}");
    println!("bad config: the journal says {error:?}");
    // StartLimitBurst=3: three starts exit 1, each schedules a restart, the
    // fourth start is refused and the unit stays failed.
    let (exits, scheduled) = (count("Main process exited, code=exited, status=1/FAILURE"), count("Scheduled restart job"));
    println!("bad config: {exits} exits with status 1, {scheduled} restarts scheduled; {state:?}");
    assert_eq!((exits, scheduled), (3, 3), "Restart=on-failure:\n{text}");
    assert_eq!(count("Start request repeated too quickly"), 1, "{text}");
}
