//! The open loop, as MLPerf's server scenario runs it: requests arrive as
//! a Poisson process at a set rate and are sent on schedule whether or not
//! earlier ones were answered. Each latency counts from the request's
//! scheduled arrival, so a server that falls behind cannot hide its queue
//! (a closed loop waits for it, and only ever measures the queue it lets
//! form). And the search: the highest rate whose p99 stays under a bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::Args;
use crate::sender::Sender;

/// What one rate gave, over the measured part.
pub struct Outcome {
    /// Latencies of the answered requests that arrived in the measured part.
    pub latencies: Vec<Duration>,
    /// Requests that failed or were not answered in time.
    pub errors: usize,
    /// Arrivals not sent because `--max-outstanding` requests were already
    /// waiting: the server is past saturation at this rate.
    pub dropped: usize,
}

/// Exponential gaps between arrivals at `rate` a second, from a seeded
/// xorshift64*: the same schedule on every run with the same seed.
pub struct Arrivals {
    state: u64,
    rate: f64,
}

impl Arrivals {
    pub fn new(seed: u64, rate: f64) -> Self {
        Arrivals { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, rate }
    }

    /// Uniform in (0, 1), never 0 (its logarithm is taken).
    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn next_gap(&mut self) -> Duration {
        Duration::from_secs_f64(-self.uniform().ln() / self.rate)
    }
}

/// Requests arriving at `rate` a second for the warm-up and the measured
/// seconds, request i through `senders[i mod n]` (one per gateway URL); then waits (at most `--drain-seconds`) for those still out.
pub async fn run_rate(senders: Arc<Vec<Sender>>, args: &Args, rate: f64) -> Outcome {
    let mut arrivals = Arrivals::new(args.seed, rate);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_seconds);
    let until = measure_from + Duration::from_secs_f64(args.seconds);
    let mut outcome = Outcome { latencies: Vec::new(), errors: 0, dropped: 0 };
    let mut out: JoinSet<(bool, bool, Duration)> = JoinSet::new();
    let record = |outcome: &mut Outcome, (measured, ok, latency): (bool, bool, Duration)| {
        if measured {
            if ok { outcome.latencies.push(latency) } else { outcome.errors += 1 }
        }
    };
    let (mut at, mut i) = (start, 0usize);
    loop {
        at += arrivals.next_gap();
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        while let Some(done) = out.try_join_next() {
            record(&mut outcome, done.expect("request task"));
        }
        let measured = at >= measure_from;
        if out.len() >= args.max_outstanding {
            outcome.dropped += usize::from(measured);
            continue;
        }
        let (senders, scheduled) = (senders.clone(), at);
        out.spawn(async move {
            // Round-robin over the gateways' URLs.
            let ok = senders[i % senders.len()].send(i).await;
            (measured, ok, scheduled.elapsed())
        });
        i += 1;
    }
    let drained = tokio::time::timeout(Duration::from_secs_f64(args.drain_seconds), async {
        while let Some(done) = out.join_next().await {
            record(&mut outcome, done.expect("request task"));
        }
    })
    .await;
    if drained.is_err() {
        // Still out after the drain: counted as failed, then abandoned.
        outcome.errors += out.len();
        out.abort_all();
    }
    outcome
}

/// One trial of the search: its rate, p99 and whether it kept the bound.
pub struct Trial {
    pub rate: f64,
    pub outcome: Outcome,
    pub p99_ms: f64,
    pub kept: bool,
}

/// The highest rate whose p99 stays at or under `bound_ms` with nothing
/// failed or dropped: doubles from `start` until a rate breaks the bound,
/// then bisects `steps` times between the last kept and the first broken.
/// Every trial is returned, in order; `on_trial` sees each as it ends.
pub async fn search(senders: Arc<Vec<Sender>>, args: &Args, start: f64, bound_ms: f64, mut on_trial: impl FnMut(&Trial)) -> Vec<Trial> {
    let mut trials = Vec::new();
    let trial = async |rate: f64| {
        let mut outcome = run_rate(senders.clone(), args, rate).await;
        outcome.latencies.sort();
        let p99_ms = crate::quantile(&outcome.latencies, 0.99);
        let kept = !outcome.latencies.is_empty() && outcome.errors == 0 && outcome.dropped == 0 && p99_ms <= bound_ms;
        Trial { rate, outcome, p99_ms, kept }
    };
    let (mut kept, mut broken) = (None::<f64>, None::<f64>);
    let mut rate = start;
    while broken.is_none() && rate <= args.max_rate {
        let t = trial(rate).await;
        on_trial(&t);
        if t.kept { kept = Some(rate) } else { broken = Some(rate) }
        trials.push(t);
        rate *= 2.0;
    }
    if let Some(mut high) = broken {
        let mut low = kept.unwrap_or(0.0);
        for _ in 0..args.search_steps {
            let mid = (low + high) / 2.0;
            let t = trial(mid).await;
            on_trial(&t);
            if t.kept { low = mid } else { high = mid }
            trials.push(t);
        }
    }
    trials
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_average_the_rate_and_repeat_with_the_seed() {
        let gaps = |seed| {
            let mut a = Arrivals::new(seed, 200.0);
            (0..20_000).map(|_| a.next_gap().as_secs_f64()).collect::<Vec<_>>()
        };
        let (one, again, other) = (gaps(7), gaps(7), gaps(8));
        assert_eq!(one, again, "the same seed gives the same schedule");
        assert_ne!(one, other);
        let mean = one.iter().sum::<f64>() / one.len() as f64;
        assert!((mean - 1.0 / 200.0).abs() < 0.05 / 200.0, "mean gap {mean}");
        // Exponential: about 1/e of the gaps are longer than the mean.
        let longer = one.iter().filter(|&&g| g > 1.0 / 200.0).count() as f64 / one.len() as f64;
        assert!((longer - (-1.0f64).exp()).abs() < 0.02, "share longer than the mean {longer}");
    }
}
