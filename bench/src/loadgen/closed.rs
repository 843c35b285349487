//! The closed loop: N clients, each sending its next request as soon as
//! the previous one is answered, for a fixed time per level.

use std::time::{Duration, Instant};

use crate::Args;
use crate::sender::Sender;

/// Runs `concurrency` clients for the warm-up and then the measured
/// seconds; latencies of the answers that started in the measured part,
/// and the error count. The clock starts once every client is made: made
/// inside it, with each client copying every file (as this did until
/// 2026-12-02), the last of 256 clients with 1080p photos started seconds
/// late and the level measured far fewer clients than it named.
pub async fn run_level(client: &reqwest::Client, args: &Args, images: &[bytes::Bytes], concurrency: usize) -> (Vec<Duration>, usize) {
    let mut senders = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        // One connection per client, as each REST client keeps its own.
        match Sender::new(args, client, &args.url[worker % args.url.len()], images).await {
            Ok(sender) => senders.push(sender),
            Err(e) => panic!("client {worker}: {e:#}"),
        }
    }
    let measure_from = Instant::now() + Duration::from_secs_f64(args.warmup_seconds);
    let until = measure_from + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (worker, sender) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut i) = (Vec::new(), 0usize, worker);
            while Instant::now() < until {
                let started = Instant::now();
                let ok = sender.send(i).await;
                i += 1;
                if started >= measure_from {
                    if ok { latencies.push(started.elapsed()) } else { errors += 1 }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("worker task");
        all.extend(l);
        errors += e;
    }
    (all, errors)
}
