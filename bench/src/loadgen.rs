//! A closed-loop load generator: N clients, each sending its next request
//! as soon as the previous one is answered, for a fixed time per level.
//! Prints one row per concurrency level: throughput and latency quantiles.
//!
//! Three protocols: the file as the body (`/v1/.../predict`), the Open
//! Inference Protocol's REST infer with the pixels as binary tensor data
//! (`v2-binary`), and its gRPC ModelInfer with the pixels as
//! raw_input_contents (`grpc`). Requests are built once per file, so the
//! client's formatting is not what is measured.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gateway::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gateway::grpc::proto::model_infer_request::InferInputTensor;
use gateway::grpc::proto::ModelInferRequest;
use serde::Serialize;

/// Closed-loop HTTP or gRPC load: images per second and p50/p90/p99 latency.
#[derive(Debug, Parser)]
struct Args {
    /// URL to POST each image to; given several times (one per gateway),
    /// client i uses URL i mod n.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Image files (or directories of them) to send, round-robin.
    #[arg(long, required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Content-Type of the bodies.
    #[arg(long, default_value = "image/png")]
    content_type: String,
    /// Concurrency levels to run, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Seconds measured at each level.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of unmeasured load before each level.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// Label for the rows (e.g. "split-jpeg").
    #[arg(long, default_value = "split")]
    label: String,
    /// Append the rows as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How each file is sent: body (POST the file), v2-binary (POST
    /// .../infer, PIXELS as binary data; --url is the infer URL) or grpc
    /// (ModelInfer, PIXELS as raw contents; --url is http://host:port).
    #[arg(long, value_enum, default_value_t = Protocol::Body)]
    protocol: Protocol,
    /// The model, for --protocol grpc.
    #[arg(long, default_value = "digits")]
    model: String,
    /// PIXELS' shape for v2-binary and grpc (the files are raw uint8 pixels).
    #[arg(long, value_delimiter = ',', default_value = "1,32,32,1")]
    shape: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Body,
    V2Binary,
    Grpc,
}

type GrpcClient = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// One client's connection and its prepared requests, one per file.
enum Sender {
    Http { client: reqwest::Client, url: String, headers: reqwest::header::HeaderMap, bodies: Vec<bytes::Bytes> },
    Grpc { client: GrpcClient, requests: Vec<ModelInferRequest> },
}

impl Sender {
    async fn new(args: &Args, http: &reqwest::Client, url: &str, files: &[bytes::Bytes]) -> anyhow::Result<Self> {
        let pixels_input = |size: usize| {
            serde_json::json!({"name": "PIXELS", "datatype": "UINT8", "shape": args.shape, "parameters": {"binary_data_size": size}})
        };
        Ok(match args.protocol {
            Protocol::Body => {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert("content-type", args.content_type.parse()?);
                // Bytes: each client's copy of the list shares the files.
                let bodies = files.to_vec();
                Sender::Http { client: http.clone(), url: url.to_string(), headers, bodies }
            }
            Protocol::V2Binary => {
                let mut headers = reqwest::header::HeaderMap::new();
                let mut bodies = Vec::new();
                for f in files {
                    let header = serde_json::json!({"inputs": [pixels_input(f.len())],
                        "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": true}}]})
                    .to_string();
                    headers.insert("inference-header-content-length", header.len().into());
                    bodies.push(bytes::Bytes::from([header.as_bytes(), f.as_ref()].concat()));
                }
                headers.insert("content-type", "application/octet-stream".parse()?);
                Sender::Http { client: http.clone(), url: url.to_string(), headers, bodies }
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Channel::from_shared(url.to_string())?.connect().await.with_context(|| format!("connecting to {url}"))?;
                let requests = files
                    .iter()
                    .map(|f| ModelInferRequest {
                        model_name: args.model.clone(),
                        inputs: vec![InferInputTensor { name: "PIXELS".into(), datatype: "UINT8".into(), shape: args.shape.clone(), ..Default::default() }],
                        raw_input_contents: vec![f.clone()],
                        ..Default::default()
                    })
                    .collect();
                Sender::Grpc { client: GrpcInferenceServiceClient::new(channel), requests }
            }
        })
    }

    /// Sends request `i` (mod the files); whether it was answered in full.
    async fn send(&mut self, i: usize) -> bool {
        match self {
            Sender::Http { client, url, headers, bodies } => {
                // Bytes: a clone is a reference count, not a copy of the image.
                let body = bodies[i % bodies.len()].clone();
                match client.post(url.as_str()).headers(headers.clone()).body(body).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
            Sender::Grpc { client, requests } => {
                let request = requests[i % requests.len()].clone();
                client.model_infer(request).await.is_ok()
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Row {
    label: String,
    concurrency: usize,
    requests: usize,
    errors: usize,
    images_per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
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

/// Runs `concurrency` clients for the warm-up and then the measured
/// seconds; latencies of the answers that started in the measured part,
/// and the error count. The clock starts once every client is made: made
/// inside it, with each client copying every file (as this did until
/// 2026-12-02), the last of 256 clients with 1080p photos started seconds
/// late and the level measured far fewer clients than it named.
async fn run_level(client: &reqwest::Client, args: &Args, images: &[bytes::Bytes], concurrency: usize) -> (Vec<Duration>, usize) {
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
    for (worker, mut sender) in senders.into_iter().enumerate() {
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

fn quantile(sorted: &[Duration], q: f64) -> f64 {
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
    println!("{:<16} {:>5} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}", "label", "conc", "requests", "errors", "img/s", "p50 ms", "p90 ms", "p99 ms");
    for &concurrency in &args.concurrency {
        let (mut latencies, errors) = run_level(&client, &args, &images, concurrency).await;
        latencies.sort();
        let row = Row {
            label: args.label.clone(),
            concurrency,
            requests: latencies.len(),
            errors,
            images_per_second: latencies.len() as f64 / args.seconds,
            p50_ms: quantile(&latencies, 0.50),
            p90_ms: quantile(&latencies, 0.90),
            p99_ms: quantile(&latencies, 0.99),
        };
        println!(
            "{:<16} {:>5} {:>9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2}",
            row.label, row.concurrency, row.requests, row.errors, row.images_per_second, row.p50_ms, row.p90_ms, row.p99_ms
        );
        if let Some(path) = &args.json {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{}", serde_json::to_string(&row)?)?;
        }
    }
    Ok(())
}
