//! The *raw* benchmark: the ceiling the split server is measured against.
//!
//! Loads the same TorchScript model with the same model.toml (precision,
//! layout, batch shapes) through the same [`Model`] the host uses, and
//! calls it in-process, one batch after another, as a program
//! that owns the model would: no HTTP, no shared memory, no queue.
//! `C` closed-loop clients are simulated exactly: each batch takes up to
//! `max_batch_size` of the waiting requests (padded to a warmed shape), and
//! a request's latency runs from when its client sent it to its answer.
//! Prints the same rows as `loadgen` (and appends them as JSON lines).
//! Image classifiers only: a tensor model is refused.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use model_host::config::DeviceChoice;
use model_host::model::Model;
use model_host::model::preprocess::Preprocessor;
use model_host::model::config::{self as model_config, padded_batch};

/// In-process throughput and latency of the model alone.
#[derive(Debug, Parser)]
struct Args {
    /// Model directory (with model.toml) or the toml file.
    #[arg(long)]
    model: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Simulated closed-loop clients, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Seconds measured at each level.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds run unmeasured before each level.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// libtorch CPU threads; 0: as the host does (1 on a GPU, libtorch's
    /// default on the CPU).
    #[arg(long, default_value_t = 0)]
    cpu_threads: i32,
    /// Label for the rows.
    #[arg(long, default_value = "raw")]
    label: String,
    /// Append the rows as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let loaded = model_config::load(&args.model)?;
    let config = &loaded.config;
    if config.classifier().is_none() {
        anyhow::bail!("{}: raw_bench runs image classifiers only; {} is a tensor model", args.model.display(), config.name);
    }
    let device = model_host::model::device::resolve(args.device)?;
    tch::jit::set_profiling_mode(false);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(config.optimization.cudnn_benchmark);
        // As the host does on a GPU (model_thread.rs).
        tch::set_num_threads(1);
    }
    if args.cpu_threads > 0 {
        tch::set_num_threads(args.cpu_threads);
    }
    let mut model = Model::load(&loaded.model_file, config, device).context("loading the model")?;
    let pre = Preprocessor::new(config, device).context("preparing the pre-processing")?;
    let slot_len = config.item_input_bytes();
    let max = config.batching.max_batch_size as usize;
    let shapes = config.batching.shapes();
    let pixels: Vec<u8> = (0..max * slot_len).map(|i| (i * 31 % 251) as u8).collect();
    for &n in shapes.iter().chain(&shapes) {
        model.run(&pre, &pixels[..n as usize * slot_len], n as usize, 5)?;
    }
    // As the host does after warm-up (model_thread.rs).
    let report = model.capture_graphs(&pre, &shapes, slot_len);
    eprintln!("{}: CUDA graphs for batch sizes {:?}; eager: {:?}", args.label, report.captured, report.failed);
    eprintln!("{}: {} on {device:?}, ready in {:.0} ms", args.label, config.name, started.elapsed().as_secs_f64() * 1e3);

    println!("{:<16} {:>5} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}", "label", "conc", "requests", "errors", "img/s", "p50 ms", "p90 ms", "p99 ms");
    for &clients in &args.concurrency {
        let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup_seconds);
        let measured = Duration::from_secs_f64(args.seconds);
        // Each entry: when that client sent its current request.
        let mut waiting: VecDeque<Instant> = (0..clients).map(|_| Instant::now()).collect();
        let mut latencies = Vec::new();
        let mut measure_from = None;
        loop {
            let now = Instant::now();
            if now >= warm_until && measure_from.is_none() {
                measure_from = Some(now);
                latencies.clear();
            }
            if measure_from.is_some_and(|from| now.duration_since(from) >= measured) {
                break;
            }
            let n = clients.min(max);
            let padded = padded_batch(&shapes, n);
            model.run(&pre, &pixels[..padded * slot_len], padded, 5)?;
            let done = Instant::now();
            for sent in waiting.drain(..n).collect::<Vec<_>>() {
                if measure_from.is_some_and(|from| sent >= from) {
                    latencies.push(done.duration_since(sent));
                }
                waiting.push_back(done);
            }
        }
        latencies.sort();
        let q = |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q).round() as usize).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        let row = serde_json::json!({
            "label": args.label, "concurrency": clients, "requests": latencies.len(), "errors": 0,
            "images_per_second": latencies.len() as f64 / args.seconds,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
        });
        println!(
            "{:<16} {:>5} {:>9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2}",
            args.label, clients, latencies.len(), 0, row["images_per_second"].as_f64().unwrap_or(0.0), q(0.5), q(0.9), q(0.99)
        );
        if let Some(path) = &args.json {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{row}")?;
        }
    }
    Ok(())
}
