//! The host speaks sd_notify as Type=notify needs: STATUS lines and
//! EXTEND_TIMEOUT_USEC while it loads and warms, READY=1 only after
//! warm-up, WATCHDOG=1 from the inference loop, STOPPING=1 and exit 0 on
//! SIGTERM; and a non-zero exit when startup fails (for Restart=on-failure).

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

/// Listens where NOTIFY_SOCKET points; forwards each datagram.
fn notify_listener(path: &std::path::Path) -> mpsc::Receiver<(Instant, String)> {
    let socket = UnixDatagram::bind(path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if tx.send((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned())).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<(Instant, String)>, seen: &mut Vec<String>, what: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, message) = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {what:?} within {limit:?}; got {seen:#?}"));
        seen.push(message.clone());
        if message.lines().any(|l| l == what) {
            return at;
        }
    }
}

#[test]
fn host_notifies_systemd_through_its_life() {
    let scratch = Scratch::new();
    let notify_path = scratch.dir.path().join("notify.sock");
    let rx = notify_listener(&notify_path);
    let env = [("NOTIFY_SOCKET", notify_path.display().to_string()), ("WATCHDOG_USEC", "400000".to_string())];
    let mut host = scratch.start_host_with_env(&[], &env);

    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, "READY=1", Duration::from_secs(120));
    let before_ready = seen.join("\n");
    assert!(before_ready.contains("STATUS=loading weights"), "{before_ready}");
    // The file's read, as it happens: percentages that only grow, then
    // all of it read (every read of the file is counted, so these lines
    // come whatever the machine's speed).
    let percents: Vec<u64> = seen
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| l.strip_prefix("STATUS=loading weights ")?.split('%').next()?.parse().ok())
        .collect();
    assert!(!percents.is_empty() && percents.windows(2).all(|w| w[0] < w[1]), "{percents:?} in {before_ready}");
    assert!(before_ready.contains("STATUS=weights read (") && before_ready.contains(" KB); freezing and casting"), "{before_ready}");
    assert!(before_ready.contains("STATUS=warming 0/"), "{before_ready}");
    assert!(before_ready.contains("EXTEND_TIMEOUT_USEC="), "{before_ready}");
    // READY only after every warm-up pass.
    let passes = host.log().matches("warm-up pass").count();
    assert_eq!(passes, 12, "READY=1 before warm-up finished:\n{}", host.log());
    assert!(seen.last().unwrap().contains("STATUS=ready"), "{seen:?}");

    // The watchdog is pinged while idle (WATCHDOG_USEC=400 ms: every 200 ms).
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok((_, m)) = rx.recv_timeout(Duration::from_millis(100)) {
            pings += m.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    assert!(pings >= 5, "only {pings} watchdog pings in 2 s");

    host.signal(Signal::SIGTERM);
    wait_for(&rx, &mut seen, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(host.wait_exit(Duration::from_secs(15)), Some(0), "graceful stop must exit 0");
}

#[test]
fn failed_startup_exits_non_zero() {
    let scratch = Scratch::new();
    let config = scratch.dir.path().join("model.toml");
    let text = std::fs::read_to_string(digits_model().join("model.toml")).unwrap();
    std::fs::write(&config, text.replace("file = \"model.pt\"", "file = \"missing.pt\"")).unwrap();
    let mut host = scratch.start_host(&["--model", config.to_str().unwrap()]);
    let code = host.wait_exit(Duration::from_secs(60));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}:\n{}", host.log());
    assert!(host.log().contains("missing.pt"), "the error names the file:\n{}", host.log());
}
