//! How fast the gateway's CPU work is, per image, single-threaded: the
//! decoders we could use for JPEG and PNG, and the gateway's own
//! decode-and-resize path (`gateway::decode::decode_to_input`).
//!
//! JPEG: `image` (which decodes with zune-jpeg) against `jpeg-decoder`
//! (image's decoder before 0.25). Inputs: the given files, or synthetic
//! photos made here at each size. Prints the median of many runs.
#![forbid(unsafe_code)]

use std::io::Cursor;
use std::time::{Duration, Instant};

use clap::Parser;
use gateway::decode::{Target, decode_to_input};
use image::{ImageFormat, RgbImage};

/// Per-image decode and resize time.
#[derive(Debug, Parser)]
struct Args {
    /// Square image sizes to make and decode.
    #[arg(long, value_delimiter = ',', default_value = "224,512,1024")]
    sizes: Vec<u32>,
    /// The model input the gateway resizes to.
    #[arg(long, default_value_t = 224)]
    target: u32,
    /// Timed runs per case (the median is printed).
    #[arg(long, default_value_t = 200)]
    runs: usize,
}

/// A smooth synthetic photo: gradients plus a little noise, so that the
/// encoded size is like a real photo's, not like noise's.
fn photo(side: u32) -> RgbImage {
    RgbImage::from_fn(side, side, |x, y| {
        let n = ((x * 7919 + y * 104_729) % 23) as u8;
        image::Rgb([(x * 255 / side) as u8 ^ n, (y * 255 / side) as u8, ((x + y) * 127 / side) as u8 + n])
    })
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

fn main() {
    let args = Args::parse();
    let target = Target { width: args.target, height: args.target, channels: 3 };
    println!("{:<24} {:>8} {:>10} {:>12} {:>12}", "case", "side", "bytes", "median us", "Mpixel/s");
    for &side in &args.sizes {
        let img = photo(side);
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let png = encode(&img, ImageFormat::Png);
        let mpix = f64::from(side * side) / 1e6;
        let row = |case: &str, bytes: usize, t: Duration| {
            println!("{case:<24} {side:>8} {bytes:>10} {:>12.1} {:>12.1}", t.as_secs_f64() * 1e6, mpix / t.as_secs_f64());
        };
        row("jpeg: image (zune-jpeg)", jpeg.len(), median(args.runs, || {
            image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).expect("decoding");
        }));
        row("jpeg: jpeg-decoder", jpeg.len(), median(args.runs, || {
            jpeg_decoder::Decoder::new(Cursor::new(&jpeg)).decode().expect("decoding");
        }));
        row("jpeg: gateway path", jpeg.len(), median(args.runs, || {
            decode_to_input(&jpeg, ImageFormat::Jpeg, target, 100_000_000).expect("decoding");
        }));
        row("png: image (png crate)", png.len(), median(args.runs, || {
            image::load_from_memory_with_format(&png, ImageFormat::Png).expect("decoding");
        }));
        row("png: gateway path", png.len(), median(args.runs, || {
            decode_to_input(&png, ImageFormat::Png, target, 100_000_000).expect("decoding");
        }));
    }
}
