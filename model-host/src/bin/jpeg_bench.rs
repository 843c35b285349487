//! How fast the host decodes JPEGs on its GPU (model.toml `decode`), alone:
//! the JPEGs in a folder, decoded and resized to a model's input by the
//! same [`JpegInput`] the feeder uses, a batch at a time, for each number
//! of decoder threads and batch size asked. Prints img/s, ms per batch and
//! how many images the hardware engines took.
//!
//!     jpeg_bench --images photos/ --threads 1,2,4 --batches 1,8,32,64
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use model_host::model::config::InputConfig;
use model_host::model::config::decode::HostDecodeConfig;
use model_host::model::jpeg_input::{Encoded, JpegInput};
use tch::Device;

#[derive(Debug, Parser)]
struct Args {
    /// A folder of .jpg files.
    #[arg(long)]
    images: PathBuf,
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    cuda: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    threads: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The model input the images are resized to.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// libnvjpeg (default: as the host looks for it).
    #[arg(long)]
    nvjpeg: Option<PathBuf>,
    /// Time nvJPEG's decode alone, without the orientation and resize.
    #[arg(long)]
    decode_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut files: Vec<Vec<u8>> = Vec::new();
    for entry in std::fs::read_dir(&args.images).with_context(|| args.images.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jpg" || e == "jpeg") {
            files.push(std::fs::read(&path)?);
        }
    }
    anyhow::ensure!(!files.is_empty(), "no .jpg files in {}", args.images.display());
    let input = InputConfig { width: args.size, height: args.size, channels: 3, mean: vec![0.0; 3], std: vec![1.0; 3] };
    println!("| threads | batch | img/s | ms per batch | on the engines | default backend |");
    println!("|---|---|---|---|---|---|");
    for &threads in &args.threads {
        let limits = HostDecodeConfig { threads, ..HostDecodeConfig::default() };
        let mut jpeg = JpegInput::open(&input, &limits, Device::Cuda(args.cuda), args.nvjpeg.as_deref()).map_err(anyhow::Error::msg)?;
        for &batch in &args.batches {
            let (engines_before, default_before) = jpeg.counts();
            let (started, mut done, mut batches) = (Instant::now(), 0usize, 0usize);
            while started.elapsed() < Duration::from_secs_f64(args.seconds) {
                let images: Vec<Encoded> = (0..batch).map(|i| Encoded { bytes: &files[(done + i) % files.len()], orientation: 1 }).collect();
                let decoded = if args.decode_only { jpeg.decode_full(&images) } else { jpeg.decode(&images) };
                tch::Cuda::synchronize(args.cuda as i64);
                anyhow::ensure!(decoded.iter().all(Result::is_ok), "a decode failed: {:?}", decoded.iter().find_map(|r| r.as_ref().err()));
                done += batch;
                batches += 1;
            }
            let seconds = started.elapsed().as_secs_f64();
            let (engines, default) = jpeg.counts();
            println!(
                "| {threads} | {batch} | {:.0} | {:.2} | {} | {} |",
                done as f64 / seconds,
                seconds * 1e3 / batches as f64,
                engines - engines_before,
                default - default_before
            );
        }
    }
    Ok(())
}
