//! How fast the host decodes JPEGs on its GPU (model.toml `decode`), alone:
//! the JPEGs in a folder, decoded and resized to a model's input by the
//! same decoders the decode stage uses, each decoder on a thread of its
//! own decoding a batch at a time, for each number of decoders and batch
//! size asked. Prints img/s, ms per batch and how many images the hardware
//! engines took.
//!
//!     jpeg_bench --images photos/ --threads 1,2,4 --batches 1,8,32,64
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use model_host::model::config::InputConfig;
use model_host::model::config::decode::HostDecodeConfig;
use model_host::model::jpeg_input::{Encoded, JpegInput, open_decoders};
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
        let mut decoders = open_decoders(&input, protocol::vision::Resize::Stretch, &limits, limits.threads, Device::Cuda(args.cuda), args.nvjpeg.as_deref()).map_err(anyhow::Error::msg)?;
        for &batch in &args.batches {
            let counts = |decoders: &[JpegInput]| decoders.iter().map(JpegInput::counts).fold((0, 0), |(h, d), (h2, d2)| (h + h2, d + d2));
            let (engines_before, default_before) = counts(&decoders);
            let started = Instant::now();
            let runs: Vec<anyhow::Result<(usize, usize)>> = std::thread::scope(|scope| {
                let running: Vec<_> = decoders
                    .iter_mut()
                    .enumerate()
                    .map(|(t, decoder)| {
                        let (files, args) = (&files, &args);
                        scope.spawn(move || run(decoder, files, t * batch, batch, args))
                    })
                    .collect();
                running.into_iter().map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a decode thread panicked")))).collect()
            });
            let seconds = started.elapsed().as_secs_f64();
            let (mut done, mut batches) = (0, 0);
            for r in runs {
                let (d, b) = r?;
                done += d;
                batches += b;
            }
            let (engines, default) = counts(&decoders);
            println!(
                "| {threads} | {batch} | {:.0} | {:.2} | {} | {} |",
                done as f64 / seconds,
                seconds * 1e3 * threads as f64 / batches as f64,
                engines - engines_before,
                default - default_before
            );
        }
    }
    Ok(())
}

/// One decoder's loop: batches of `batch` files from `first` on, for the
/// time asked; (images, batches) done.
fn run(decoder: &mut JpegInput, files: &[Vec<u8>], first: usize, batch: usize, args: &Args) -> anyhow::Result<(usize, usize)> {
    let (started, mut done, mut batches) = (Instant::now(), 0usize, 0usize);
    while started.elapsed() < Duration::from_secs_f64(args.seconds) {
        let images: Vec<Encoded> = (0..batch).map(|i| Encoded { bytes: &files[(first + done + i) % files.len()], orientation: 1 }).collect();
        let decoded = if args.decode_only { decoder.decode_full(&images) } else { decoder.decode(&images) };
        anyhow::ensure!(decoded.iter().all(Result::is_ok), "a decode failed: {:?}", decoded.iter().find_map(|r| r.as_ref().err()));
        done += batch;
        batches += 1;
    }
    Ok((done, batches))
}
