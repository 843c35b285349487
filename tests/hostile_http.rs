//! Clients that hold the gateway's connections without finishing a request:
//! slow headers (slowloris) are cut off at the header timeout, slow bodies
//! get 408 at the body timeout, and thousands of idle connections neither
//! stop real requests nor stay open past the header timeout.
//!
//! SLOWLORIS_CONNECTIONS and IDLE_CONNECTIONS override the counts
//! (scripts/soak runs more).

use std::time::{Duration, Instant};

use integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests here measure timings on a 2-core machine: one at a time.
/// (tokio's Mutex: each test has its own runtime, and it works across them.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Idle clients each hold a descriptor here too: lift the soft limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

/// Real predictions, `count` of them, 4 at a time: each one's latency.
async fn real_requests(gateway: &Gateway, samples: &[Sample], count: usize) -> Vec<Duration> {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let url = gateway.predict_url();
    let mut took: Vec<Duration> = futures::stream::iter(samples.iter().cycle().take(count))
        .map(|s| {
            let (client, url) = (&client, &url);
            async move {
                let started = Instant::now();
                let (status, _, body) = post_image(client, url, s.bytes.clone(), "image/png").await;
                assert_eq!(status, 200, "a real request failed: {body}");
                assert_eq!(top_label(&body), s.label);
                started.elapsed()
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    took.sort();
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sends `head` one byte every `every` until the gateway closes the
/// connection; how long after connecting it closed, and how many bytes it
/// had been given.
async fn slowloris(addr: String, head: &'static [u8], every: Duration, give_up: Duration) -> (Duration, usize) {
    let stream = TcpStream::connect(addr).await.expect("connecting");
    // From the connection, not the attempt: a SYN dropped in a burst of
    // connects is retried a second later.
    let started = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return (started.elapsed(), sent),
                // Whatever the gateway says before closing, read on to the close.
                Ok(_) => continue,
            },
            () = tokio::time::sleep(every) => {
                assert!(started.elapsed() < give_up, "a slow-header connection was still open after {give_up:?}");
                if wr.write_all(&head[sent % head.len()..][..1]).await.is_err() {
                    return (started.elapsed(), sent);
                }
                sent += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_are_cut_off_at_the_header_timeout() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let header_timeout = Duration::from_millis(1000);
    let connections: usize = env_or("SLOWLORIS_CONNECTIONS", 200);
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&["--header-timeout-ms", &header_timeout.as_millis().to_string()]);
    gateway.wait_ready().await;
    let samples = rightly_classified(&gateway, "gray8", 50).await;
    let addr = format!("127.0.0.1:{}", gateway.port);

    // A head that never ends: one byte every 300 ms, for ever.
    const HEAD: &[u8] = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let give_up = header_timeout + Duration::from_secs(5);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(slowloris(addr.clone(), HEAD, Duration::from_millis(300), give_up)))
        .collect();
    // While they trickle, real clients are served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let real = real_requests(&gateway, &samples, 40).await;
    let mut closed = Vec::new();
    for t in tasks {
        closed.push(t.await.expect("slowloris task"));
    }
    closed.sort();
    let (first, last) = (closed[0].0, closed[closed.len() - 1].0);
    let most_bytes = closed.iter().map(|c| c.1).max().unwrap();
    println!(
        "slowloris: {connections} connections, header timeout {header_timeout:?}: closed after {:.0}..{:.0} ms \
         (having sent at most {most_bytes} bytes); real requests meanwhile p50 {:.1} ms, max {:.1} ms",
        ms(first),
        ms(last),
        ms(real[real.len() / 2]),
        ms(real[real.len() - 1])
    );
    assert!(first >= header_timeout - Duration::from_millis(100), "closed before the header timeout: {first:?}");
    assert!(last < header_timeout + Duration::from_secs(3), "a slow-header connection lived {last:?}");
    assert!(real[real.len() - 1] < Duration::from_secs(2), "real requests slowed: max {:?}", real[real.len() - 1]);
}

/// The status and JSON body of a raw HTTP response; reads until the body
/// is complete or the connection closes.
async fn read_response(stream: &mut tokio::net::tcp::OwnedReadHalf) -> (u16, serde_json::Value) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = serde_json::from_slice(&raw[end + 4..end + 4 + len]).unwrap_or_default();
                return (status, body);
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => panic!("connection closed before a whole response: {:?}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_get_408_at_the_body_timeout() {
    let _serial = SERIAL.lock().await;
    let body_timeout = Duration::from_millis(1500);
    let connections = 20;
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&["--body-timeout-ms", &body_timeout.as_millis().to_string()]);
    gateway.wait_ready().await;
    let samples = rightly_classified(&gateway, "gray8", 50).await;
    let addr = format!("127.0.0.1:{}", gateway.port);

    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connecting");
                let (mut rd, mut wr) = stream.into_split();
                let head = "POST /v1/models/digits/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                            Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n";
                wr.write_all(head.as_bytes()).await.expect("sending the head");
                let started = Instant::now();
                // 1000 bytes at 5 a second would take 200 s.
                let trickle = tokio::spawn(async move {
                    for _ in 0..1000 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if wr.write_all(&[0]).await.is_err() {
                            return;
                        }
                    }
                });
                let answer = tokio::time::timeout(Duration::from_secs(10), read_response(&mut rd)).await;
                let took = started.elapsed();
                trickle.abort();
                let (status, body) = answer.expect("no answer to a slow body within 10 s");
                (status, body, took)
            })
        })
        .collect();
    let real = real_requests(&gateway, &samples, 40).await;
    let mut took = Vec::new();
    for t in tasks {
        let (status, body, t) = t.await.expect("slow body task");
        assert_eq!(status, 408, "{body}");
        assert_eq!(body["type"], "request_timeout", "{body}");
        took.push(t);
    }
    took.sort();
    println!(
        "slow bodies: {connections} connections, body timeout {body_timeout:?}: 408 after {:.0}..{:.0} ms; \
         real requests meanwhile p50 {:.1} ms, max {:.1} ms",
        ms(took[0]),
        ms(took[took.len() - 1]),
        ms(real[real.len() / 2]),
        ms(real[real.len() - 1])
    );
    assert!(took[0] >= body_timeout - Duration::from_millis(100), "408 before the body timeout: {:?}", took[0]);
    assert!(took[took.len() - 1] < body_timeout + Duration::from_secs(3), "408 late: {:?}", took[took.len() - 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_idle_connections_do_not_stop_real_requests() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let connections: usize = env_or("IDLE_CONNECTIONS", 2000);
    // Long enough to open them all and run the real requests before the
    // first ones time out (opening takes about 0.1 ms per connection here).
    let header_timeout = Duration::from_secs(4) + Duration::from_millis(1) * connections as u32;
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&["--header-timeout-ms", &header_timeout.as_millis().to_string()]);
    gateway.wait_ready().await;
    let samples = rightly_classified(&gateway, "gray8", 50).await;
    let addr = format!("127.0.0.1:{}", gateway.port);
    let pid = gateway.process.pid();
    let (fds0, rss0) = (fd_count(pid), proc_status(pid, "VmRSS"));

    // Open them in waves of 100, each accepted before the next: larger
    // bursts of SYNs on loopback see some dropped, and those connections
    // wait a second for the retransmit.
    let opened_at = Instant::now();
    let mut idle = Vec::with_capacity(connections);
    for wave in 0..connections.div_ceil(100) {
        let n = 100.min(connections - wave * 100);
        let opened = futures::future::join_all((0..n).map(|_| TcpStream::connect(addr.clone()))).await;
        idle.extend(opened.into_iter().map(|s| s.expect("opening an idle connection")));
        let held = idle.len();
        eventually(Duration::from_secs(5), async || fd_count(pid) >= held).await;
    }
    assert!(fd_count(pid) >= connections, "the gateway holds {} descriptors for {connections} connections", fd_count(pid));
    let all_open_at = Instant::now();
    let (fds1, rss1) = (fd_count(pid), proc_status(pid, "VmRSS"));

    let real = real_requests(&gateway, &samples, 100).await;
    let real_done = opened_at.elapsed();
    assert!(real_done < header_timeout, "too slow to be meaningful: the idle connections may have timed out already");

    // Each idle connection is closed by the gateway at the header timeout.
    let closed = futures::future::join_all(idle.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }))
    .await;
    let all_closed_after = all_open_at.elapsed();
    let still_open = closed.iter().filter(|c| !**c).count();
    let fds2 = eventually(Duration::from_secs(3), async || fd_count(pid) <= fds0 + 2).await.map(|_| fd_count(pid));
    println!(
        "idle: {connections} connections held (gateway fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB, {:+} KiB); \
         100 real requests meanwhile: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; opened in {:.1} s, all closed {:.1} s after the last \
         opened (header timeout {header_timeout:?}); fds after {fds2:?}",
        rss1 as i64 - rss0 as i64,
        ms(real[49]),
        ms(real[98]),
        ms(real[99]),
        all_open_at.duration_since(opened_at).as_secs_f64(),
        all_closed_after.as_secs_f64()
    );
    assert!(real[99] < Duration::from_secs(2), "real requests slowed by idle connections: max {:?}", real[99]);
    assert_eq!(still_open, 0, "{still_open} idle connections were never closed");
    assert!(all_closed_after < header_timeout + Duration::from_secs(3), "idle connections lived {all_closed_after:?} past the last opened");
    assert!(fds2.is_some(), "the gateway kept descriptors: {} (was {fds0})", fd_count(pid));
    assert!(rss1 < rss0 + 64 * 1024, "{connections} idle connections cost {} KiB", rss1 - rss0);
}
