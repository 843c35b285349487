//! How fast the gateway's CPU work is, per image, single-threaded: the
//! JPEG decoders we could use and the gateway's own decode-and-resize
//! path (`gateway_imaging::decode::decode_to_input`), for photos of the sizes users
//! send (docs/benchmarks.md, "Real photos").
//!
//! JPEG, each to a 224x224 RGB input where it applies:
//! - `image (zune-jpeg), full`: what the gateway did before: decode every
//!   pixel, then resize;
//! - `jpeg-decoder, scaled`: pure Rust, DCT-domain scaling (1/2, 1/4, 1/8);
//! - `libjpeg-turbo, full` and `libjpeg-turbo, scaled` (k/8 scaling);
//! - `gateway path`: what the gateway does now (libjpeg-turbo scaled,
//!   orientation, resize).
//!
//! Inputs are synthetic photos made here (gradients plus fine texture, so
//! that quality 90 gives about the bytes per pixel of a real photo:
//! ~660 KB at 1920x1080), or the given files. Prints the median of many runs.
#![forbid(unsafe_code)]

use std::io::Cursor;
use std::time::{Duration, Instant};

use clap::Parser;
use gateway_imaging::decode::{Target, decode_to_input};
use image::{ImageFormat, RgbImage};
use turbojpeg::{Decompressor, Image, PixelFormat};

/// Per-image decode and resize time.
#[derive(Debug, Parser)]
struct Args {
    /// Image sizes (WIDTHxHEIGHT) to make and decode.
    #[arg(long, value_delimiter = ',', default_value = "224x224,1920x1080,4032x3024")]
    sizes: Vec<String>,
    /// JPEG files to decode instead of synthetic photos.
    #[arg(long, value_delimiter = ',')]
    files: Vec<std::path::PathBuf>,
    /// The model input the gateway resizes to (square).
    #[arg(long, default_value_t = 224)]
    target: u32,
    /// Timed runs per case (the median is printed).
    #[arg(long, default_value_t = 30)]
    runs: usize,
}

/// A synthetic photo: smooth gradients plus a deterministic fine texture.
fn photo(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    RgbImage::from_fn(width, height, |x, y| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let n = (state >> 24) as i32 % 48 - 24;
        let c = |v: u32| (v as i32 + n).clamp(0, 255) as u8;
        image::Rgb([c(x * 255 / width), c(y * 255 / height), c((x + y) * 127 / (width + height) + 64)])
    })
}

fn parse_size(s: &str) -> (u32, u32) {
    let (w, h) = s.split_once('x').expect("sizes are WIDTHxHEIGHT");
    (w.parse().expect("width"), h.parse().expect("height"))
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encoding to memory");
    out.into_inner()
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn turbo(jpeg: &[u8], factor: turbojpeg::ScalingFactor) {
    let mut d = Decompressor::new().expect("decompressor");
    let header = d.read_header(jpeg).expect("header").scaled(factor);
    d.set_scaling_factor(factor).expect("scaling factor");
    let mut pixels = vec![0; header.width * header.height * 3];
    let image = Image { pixels: pixels.as_mut_slice(), width: header.width, pitch: header.width * 3, height: header.height, format: PixelFormat::RGB };
    d.decompress(jpeg, image).expect("decoding");
}

fn main() {
    let args = Args::parse();
    // As in the gateway: a resize runs on its caller's thread, a mask on the masks' threads.
    gateway_imaging::threads::start().expect("the gateway's threads (see gateway_imaging::threads)");
    let target = Target { width: args.target, height: args.target, channels: 3 };
    let inputs: Vec<(String, Vec<u8>)> = if args.files.is_empty() {
        args.sizes.iter().map(|s| (s.clone(), { let (w, h) = parse_size(s); encode(&photo(w, h), ImageFormat::Jpeg) })).collect()
    } else {
        args.files.iter().map(|f| (f.display().to_string(), std::fs::read(f).expect("reading a file"))).collect()
    };
    println!("{:<32} {:>12} {:>10} {:>12} {:>12}", "case", "image", "bytes", "median ms", "images/s");
    for (name, jpeg) in &inputs {
        let (w, h) = image::ImageReader::with_format(Cursor::new(jpeg), ImageFormat::Jpeg).into_dimensions().expect("header");
        let row = |case: &str, t: Duration| {
            println!("{case:<32} {name:>12} {:>10} {:>12.2} {:>12.0}", jpeg.len(), t.as_secs_f64() * 1e3, 1.0 / t.as_secs_f64());
        };
        row("image (zune-jpeg), full", median(args.runs, || {
            image::load_from_memory_with_format(jpeg, ImageFormat::Jpeg).expect("decoding");
        }));
        row("jpeg-decoder, scaled", median(args.runs, || {
            let mut d = jpeg_decoder::Decoder::new(Cursor::new(jpeg));
            d.scale(args.target as u16, args.target as u16).expect("scale");
            d.decode().expect("decoding");
        }));
        row("libjpeg-turbo, full", median(args.runs, || turbo(jpeg, turbojpeg::ScalingFactor::ONE)));
        let factor = gateway_imaging::decode::jpeg::scale_for(w, h, (args.target, args.target));
        row(&format!("libjpeg-turbo, scaled {factor}"), median(args.runs, || turbo(jpeg, factor)));
        row("gateway path (to 224x224x3)", median(args.runs, || {
            decode_to_input(jpeg, ImageFormat::Jpeg, target, 100_000_000).expect("decoding");
        }));
    }
}
