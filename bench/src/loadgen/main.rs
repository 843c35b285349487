//! A load generator for the benchmarks: HTTP or gRPC requests against one
//! or more gateways, closed loop ([`closed`]: N clients, each sending its
//! next request when the last is answered) or open loop ([`open`]: Poisson
//! arrivals at a set rate, and the search for the highest rate whose p99
//! stays under a bound, as MLPerf's server scenario). Prints one row per
//! concurrency level or rate: throughput and latency quantiles.
//!
//! Three protocols ([`sender`]): the file as the body (`/v1/.../predict`),
//! the Open Inference Protocol's REST infer with the pixels as binary
//! tensor data (`v2-binary`), and its gRPC ModelInfer with the pixels as
//! raw_input_contents (`grpc`).
#![forbid(unsafe_code)]

mod closed;
mod open;
mod sender;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;

use sender::Sender;

/// HTTP or gRPC load, closed loop or Poisson arrivals: images per second
/// and p50/p90/p99 latency.
#[derive(Debug, Parser)]
pub struct Args {
    /// URL to POST each image to; given several times (one per gateway),
    /// client i (closed loop) or request i (Poisson) uses URL i mod n.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Image files (or directories of them) to send, round-robin.
    #[arg(long, required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Content-Type of the bodies.
    #[arg(long, default_value = "image/png")]
    pub content_type: String,
    /// Concurrency levels to run, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Seconds measured at each level.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of unmeasured load before each level.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_seconds: f64,
    /// Label for the rows (e.g. "split-jpeg").
    #[arg(long, default_value = "split")]
    pub label: String,
    /// Append the rows as JSON lines to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How each file is sent: body (POST the file), v2-binary (POST
    /// .../infer, PIXELS as binary data; --url is the infer URL) or grpc
    /// (ModelInfer, PIXELS as raw contents; --url is http://host:port).
    #[arg(long, value_enum, default_value_t = Protocol::Body)]
    pub protocol: Protocol,
    /// The model, for --protocol grpc.
    #[arg(long, default_value = "digits")]
    pub model: String,
    /// PIXELS' shape for v2-binary and grpc (the files are raw uint8 pixels).
    #[arg(long, value_delimiter = ',', default_value = "1,32,32,1")]
    pub shape: Vec<i64>,
    /// How requests arrive: `closed` (each of --concurrency clients sends
    /// its next request when the last is answered) or `poisson` (open loop:
    /// requests at --rate a second, exponential gaps, sent on schedule
    /// whether or not earlier ones were answered; latency counted from the
    /// scheduled arrival).
    #[arg(long, value_enum, default_value_t = Arrival::Closed)]
    pub arrival: Arrival,
    /// Poisson rates to run, requests a second, one after another; with
    /// --p99-bound-ms, the first is where the search starts.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rate: Vec<f64>,
    /// Poisson only: search for the highest rate whose p99 latency stays at
    /// or under this many milliseconds with nothing failed or dropped
    /// (MLPerf's server scenario); prints every trial, then the answer.
    #[arg(long)]
    pub p99_bound_ms: Option<f64>,
    /// The search's bisection steps after the doubling finds a broken rate.
    #[arg(long, default_value_t = 6)]
    pub search_steps: usize,
    /// The search never tries a rate above this.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// Seed of the Poisson schedule: the same seed, the same arrivals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Poisson only: arrivals beyond this many unanswered requests are not
    /// sent and are counted as dropped (the rate is past saturation).
    #[arg(long, default_value_t = 8192)]
    pub max_outstanding: usize,
    /// Poisson only: how long requests still out at the end may take.
    #[arg(long, default_value_t = 30.0)]
    pub drain_seconds: f64,
}


#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Body,
    V2Binary,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    Closed,
    Poisson,
}

#[derive(Debug, Serialize)]
struct Row {
    label: String,
    /// `closed` or `poisson`.
    arrival: &'static str,
    /// Clients of a closed loop; 0 for Poisson arrivals.
    concurrency: usize,
    /// Poisson arrivals: the rate offered, requests a second.
    #[serde(skip_serializing_if = "Option::is_none")]
    offered_rate: Option<f64>,
    requests: usize,
    errors: usize,
    /// Poisson arrivals not sent: too many requests already unanswered.
    dropped: usize,
    images_per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

impl Row {
    fn new(args: &Args, arrival: &'static str, concurrency: usize, offered_rate: Option<f64>, mut latencies: Vec<Duration>, errors: usize, dropped: usize) -> Row {
        latencies.sort();
        Row {
            label: args.label.clone(),
            arrival,
            concurrency,
            offered_rate,
            requests: latencies.len(),
            errors,
            dropped,
            images_per_second: latencies.len() as f64 / args.seconds,
            p50_ms: quantile(&latencies, 0.50),
            p90_ms: quantile(&latencies, 0.90),
            p99_ms: quantile(&latencies, 0.99),
        }
    }

    fn print(&self) {
        let load = self.offered_rate.map_or(format!("{}", self.concurrency), |r| format!("{r:.0}/s"));
        println!(
            "{:<16} {:>9} {:>9} {:>7} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2}",
            self.label, load, self.requests, self.errors, self.dropped, self.images_per_second, self.p50_ms, self.p90_ms, self.p99_ms
        );
    }

    fn append_to(&self, path: &Option<PathBuf>) -> anyhow::Result<()> {
        if let Some(path) = path {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{}", serde_json::to_string(self)?)?;
        }
        Ok(())
    }
}

fn load_images(paths: &[PathBuf]) -> anyhow::Result<Vec<bytes::Bytes>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)?.flatten().map(|e| e.path()).collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        bail!("no images found in {paths:?}");
    }
    files.iter().map(|f| Ok(std::fs::read(f).with_context(|| f.display().to_string())?.into())).collect()
}

pub fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let images = load_images(&args.images)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    println!("{:<16} {:>9} {:>9} {:>7} {:>7} {:>10} {:>9} {:>9} {:>9}", "label", "load", "requests", "errors", "dropped", "img/s", "p50 ms", "p90 ms", "p99 ms");
    match args.arrival {
        Arrival::Closed => {
            for &concurrency in &args.concurrency {
                let (latencies, errors) = closed::run_level(&client, &args, &images, concurrency).await;
                let row = Row::new(&args, "closed", concurrency, None, latencies, errors, 0);
                row.print();
                row.append_to(&args.json)?;
            }
        }
        Arrival::Poisson => {
            // One sender per gateway URL, shared by every request to it:
            // HTTP requests share the client's pool (it opens connections
            // as arrivals need them), gRPC ones the URL's channel (HTTP/2).
            let mut senders = Vec::with_capacity(args.url.len());
            for url in &args.url {
                senders.push(Sender::new(&args, &client, url, &images).await?);
            }
            let senders = Arc::new(senders);
            if let Some(bound) = args.p99_bound_ms {
                let start = args.rate.first().copied().unwrap_or(100.0);
                let mut failure = None;
                let trials = open::search(senders.clone(), &args, start, bound, |t| {
                    let row = Row::new(&args, "poisson", 0, Some(t.rate), t.outcome.latencies.clone(), t.outcome.errors, t.outcome.dropped);
                    row.print();
                    if let Err(e) = row.append_to(&args.json) {
                        failure.get_or_insert(e);
                    }
                })
                .await;
                if let Some(e) = failure {
                    return Err(e);
                }
                let best = trials.iter().filter(|t| t.kept).max_by(|a, b| a.rate.total_cmp(&b.rate));
                match best {
                    Some(t) => println!("highest rate with p99 <= {bound} ms: {:.1} requests/s (p99 {:.2} ms)", t.rate, t.p99_ms),
                    None => println!("no rate tried kept p99 <= {bound} ms (lowest tried {start}/s)"),
                }
            } else {
                for &rate in &args.rate {
                    let outcome = open::run_rate(senders.clone(), &args, rate).await;
                    let row = Row::new(&args, "poisson", 0, Some(rate), outcome.latencies, outcome.errors, outcome.dropped);
                    row.print();
                    row.append_to(&args.json)?;
                }
            }
        }
    }
    Ok(())
}
