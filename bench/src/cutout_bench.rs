//! How fast a segmenter's answer is made by a gateway, per image, with the
//! mask's resize and counts on the masks' threads as in the gateway (as
//! many as the cores it may use: `taskset -c 0` gives one core's figures):
//! the mask brought back to the photo's size (`masks::to_original`), then
//! the `format=cutout` PNG (the photo as RGBA with the alpha applied) or
//! the `format=png` alpha, or the JSON answer's per-class pixel counts and
//! boxes, for a one-channel alpha mask at the model's
//! size (512x512 by default, as a background-removal network gives) and a
//! photo of the size users send (1920x1080 by default).
//!
//! The photo is synthetic (gradients plus fine texture, as in
//! `decode_bench`), the mask a soft-edged ellipse: a PNG of it compresses
//! about as a real cut-out does. Prints the median of many runs and the
//! answer's bytes.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use clap::Parser;
use gateway_imaging::postprocess::Transform;
use gateway_imaging::postprocess::masks::to_original;
use protocol::ImageShape;
use protocol::vision::{MaskKind, Resize, SegmentationSpec, VisionModel, VisionTask};

/// Per-image mask, cut-out and PNG time.
#[derive(Debug, Parser)]
struct Args {
    /// The photo's size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1920x1080")]
    photo: String,
    /// The model's input and mask size (square).
    #[arg(long, default_value_t = 512)]
    mask: u32,
    /// Timed runs per case (the median is printed).
    #[arg(long, default_value_t = 15)]
    runs: usize,
}

fn photo(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = (state >> 24) as i32 % 48 - 24;
            let c = |v: u32| (v as i32 + n).clamp(0, 255) as u8;
            rgb.extend([c(x * 255 / width), c(y * 255 / height), c((x + y) * 127 / (width + height) + 64)]);
        }
    }
    rgb
}

/// A soft-edged ellipse filling about half the mask: the alpha 8-bit, as
/// the host answers (made on its device).
fn alpha_plane(size: u32) -> Vec<u8> {
    let c = size as f32 / 2.0;
    (0..size * size)
        .map(|i| {
            let (x, y) = ((i % size) as f32 - c, (i / size) as f32 - c * 1.1);
            let d = ((x / (0.6 * c)).powi(2) + (y / (0.8 * c)).powi(2)).sqrt();
            (((1.0 - d) * 8.0).clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

fn median(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs[runs.len() / 2].as_secs_f64() * 1e3
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut last = f();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        last = f();
        times.push(started.elapsed());
    }
    (median(times), last)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As in the gateway: a resize runs on its caller's thread, a mask on the masks' threads.
    gateway_imaging::threads::start().map_err(anyhow::Error::msg)?;
    let (width, height) = args.photo.split_once('x').map(|(w, h)| (w.parse(), h.parse())).ok_or_else(|| anyhow::anyhow!("--photo is WIDTHxHEIGHT"))?;
    let (width, height): (u32, u32) = (width?, height?);
    let spec = SegmentationSpec { labels: vec!["background".into(), "foreground".into()], resize: Resize::Stretch, mask: MaskKind::Alpha, width: args.mask, height: args.mask };
    let input = ImageShape { width: args.mask, height: args.mask, channels: 3 };
    let signature = VisionModel::new(input, VisionTask::Segmentation(spec.clone())).signature;
    let outputs = alpha_plane(args.mask); // the mask output is at offset 0
    let transform = Transform::new(Resize::Stretch, (width, height), (args.mask, args.mask));
    let rgb = photo(width, height);

    let (mask_ms, mask) = time(args.runs, || to_original(&outputs, &signature, &spec, &transform).expect("mask"));
    let (cutout_ms, cutout) = time(args.runs, || mask.cutout(&rgb).expect("cutout"));
    let (png_ms, png) = time(args.runs, || mask.png(MaskKind::Alpha).expect("png"));
    let (areas_ms, _) = time(args.runs, || mask.areas(&spec.labels));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("{width}x{height} photo, {0}x{0} alpha mask, the masks' pool on {cores} cores, median of {1} runs:", args.mask, args.runs);
    println!("| step | ms | answer bytes |");
    println!("|---|---|---|");
    println!("| mask to the photo's size | {mask_ms:.2} | |");
    println!("| cut-out: alpha applied, RGBA PNG | {cutout_ms:.2} | {} |", cutout.len());
    println!("| alpha as PNG | {png_ms:.2} | {} |", png.len());
    println!("| per-class pixels and boxes (the JSON answer) | {areas_ms:.2} | |");
    println!("| format=cutout in all | {:.2} | |", mask_ms + cutout_ms);
    println!("| JSON in all | {:.2} | |", mask_ms + areas_ms);
    Ok(())
}
