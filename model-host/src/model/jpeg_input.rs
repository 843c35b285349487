//! JPEGs decoded on the host's GPU into the input of a model that takes
//! images (a classifier or a vision model), for requests whose slot holds
//! the encoded file (`Payload::Jpeg`).
//!
//! nvJPEG decodes each file at full size on the device (the hardware
//! engines where they take it); then, still on the device and on the
//! decoder's own stream, images of one size and orientation together: EXIF
//! orientation (read by the gateway from the header), grayscale if the
//! model wants one channel (BT.601 luma, as the gateway's JPEG path), and
//! an antialiased bilinear resize to the model's size (the filter the
//! gateway's resize uses): stretched, or letterboxed into the padding
//! where `Resize::content` (the gateway's own arithmetic, in `protocol`)
//! puts it, rounded back to uint8 HWC: the same bytes the gateway would
//! have written, give or take rounding.
//!
//! One [`JpegInput`] is one decoder (nvJPEG state and stream), used by one
//! thread of the decode stage; [`open_decoders`] opens several at once.

use std::collections::HashMap;
use std::path::Path;

use protocol::vision::Resize;
use tch::{Device, Kind, Tensor};

use crate::model::config::InputConfig;
use crate::model::config::decode::HostDecodeConfig;
use crate::torch_shim::jpeg::{DecodeFailure, JpegDecoder, library_candidates};

/// A 64x48 JPEG decoded at start, twice, so that nvJPEG's lazy set-up
/// (its buffers, the hardware engines' first batch) is paid before READY
/// and a decoder that cannot decode is found then, not by a client.
const WARM_UP_JPEG: &[u8] = include_bytes!("../../assets/warm_up.jpg");

pub struct JpegInput {
    decoder: JpegDecoder,
    height: i64,
    width: i64,
    channels: i64,
    /// Stretched to the input, or letterboxed (a vision model's choice).
    resize: Resize,
    max_pixels: u64,
}

/// One request's file and its EXIF orientation (1-8).
pub struct Encoded<'a> {
    pub bytes: &'a [u8],
    pub orientation: u8,
}

/// Opens `count` decoders for `device`, each on a thread of its own
/// (opening and warming one takes 0.4-0.5 s on an H200, nearly all of it
/// waiting on the driver; four side by side took 2.2 s on an H100); the
/// error says why the host cannot decode (no GPU, no library).
pub fn open_decoders(input: &InputConfig, resize: Resize, limits: &HostDecodeConfig, count: usize, device: Device, library: Option<&Path>) -> Result<Vec<JpegInput>, String> {
    let opened: Vec<Result<JpegInput, String>> = std::thread::scope(|scope| {
        let opening: Vec<_> = (0..count.max(1)).map(|_| scope.spawn(|| JpegInput::open(input, resize, limits, device, library))).collect();
        opening.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("opening a decoder panicked".into()))).collect()
    });
    let decoders = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    let first = &decoders[0].decoder;
    tracing::info!(library = %first.library.display(), hardware_engines = first.hardware, threads = decoders.len(), "nvJPEG decoders open");
    Ok(decoders)
}

impl JpegInput {
    /// Opens one nvJPEG decoder for `device` and warms it.
    pub fn open(input: &InputConfig, resize: Resize, limits: &HostDecodeConfig, device: Device, library: Option<&Path>) -> Result<Self, String> {
        let Device::Cuda(index) = device else {
            return Err("the model runs on the CPU; nvJPEG needs a CUDA device".into());
        };
        let decoder = JpegDecoder::open(&library_candidates(library), index).map_err(|e| e.0)?;
        let mut jpeg = Self {
            decoder,
            height: i64::from(input.height),
            width: i64::from(input.width),
            channels: i64::from(input.channels),
            resize,
            max_pixels: limits.max_pixels,
        };
        jpeg.warm_up()?;
        Ok(jpeg)
    }

    /// Images decoded so far: (by the hardware engines, by nvJPEG's default backend).
    pub fn counts(&self) -> (u64, u64) {
        self.decoder.counts()
    }

    /// Decodes [`WARM_UP_JPEG`] twice; a first failure is logged and tried
    /// once more (nvJPEG sets itself up on first use).
    fn warm_up(&mut self) -> Result<(), String> {
        let images = [Encoded { bytes: WARM_UP_JPEG, orientation: 1 }, Encoded { bytes: WARM_UP_JPEG, orientation: 1 }];
        let mut last = String::new();
        for attempt in 1..=2 {
            let failures: Vec<String> = self.decode(&images).into_iter().filter_map(|r| r.err()).map(|f| format!("{f:?}")).collect();
            if failures.is_empty() {
                return Ok(());
            }
            last = failures.join("; ");
            tracing::warn!(attempt, failures = %last, "nvJPEG warm-up decode failed");
        }
        Err(format!("nvJPEG could not decode a test JPEG: {last}"))
    }

    /// Each file as the model's input ([height, width, channels] uint8 on
    /// the device, complete), or why that one could not be. An error of
    /// the whole call fails every image in it, as the decoder's fault.
    pub fn decode(&mut self, images: &[Encoded]) -> Vec<Result<Tensor, DecodeFailure>> {
        self.decode_then(images, true)
    }

    /// Each file at full size ([h, w, 3] RGB on the device, complete): what
    /// [`Self::decode`] does before the resize, for benchmarks.
    pub fn decode_full(&mut self, images: &[Encoded]) -> Vec<Result<Tensor, DecodeFailure>> {
        self.decode_then(images, false)
    }

    fn decode_then(&mut self, images: &[Encoded], resize: bool) -> Vec<Result<Tensor, DecodeFailure>> {
        let (shape, max_pixels, how) = ((self.height, self.width, self.channels), self.max_pixels, self.resize);
        let files: Vec<&[u8]> = images.iter().map(|i| i.bytes).collect();
        let done = self.decoder.on_own_stream(|stream| {
            let decoded = stream.decode(&files, max_pixels)?;
            Ok(if resize { resize_all(&decoded, images, shape, how, RESIZE_PIXELS) } else { decoded })
        });
        match done.and_then(|r| r) {
            Ok(out) => out,
            Err(e) => images.iter().map(|_| Err(DecodeFailure::Decoder(format!("JPEG decode on the device failed: {e}")))).collect(),
        }
    }
}

/// The most pixels resized at once: the resize works in fp32 (12 bytes a
/// pixel with the copy), so 256 MP is ~3 GB of device memory per decoder,
/// whatever a group of large, well-compressed files would otherwise stack.
const RESIZE_PIXELS: i64 = 256 << 20;

/// The decoded images (full size) as the model's inputs (`shape`: height,
/// width, channels): those of one stored size and orientation stacked and
/// resized together, up to `budget` pixels at a time.
fn resize_all(
    decoded: &[Result<Tensor, DecodeFailure>],
    images: &[Encoded],
    shape: (i64, i64, i64),
    how: Resize,
    budget: i64,
) -> Vec<Result<Tensor, DecodeFailure>> {
    let (height, width, channels) = shape;
    let mut groups: HashMap<(Vec<i64>, u8), Vec<usize>> = HashMap::new();
    for (i, rgb) in decoded.iter().enumerate() {
        if let Ok(rgb) = rgb {
            groups.entry((rgb.size(), images[i].orientation)).or_default().push(i);
        }
    }
    let mut out: Vec<Option<Result<Tensor, DecodeFailure>>> = decoded.iter().map(|r| r.as_ref().err().cloned().map(Err)).collect();
    for ((size, orientation), members) in groups {
        let per = (budget / size.iter().take(2).product::<i64>().max(1)).max(1) as usize;
        for members in members.chunks(per) {
            let stacked: Vec<&Tensor> = members.iter().filter_map(|&i| decoded[i].as_ref().ok()).collect();
            let resized = Tensor::f_stack(&stacked, 0)
                .and_then(|batch| upright(&batch, orientation))
                .and_then(|batch| to_input(&batch, height, width, channels, how));
            for (row, &i) in members.iter().enumerate() {
                out[i] = Some(match &resized {
                    Ok(batch) => Ok(batch.get(row as i64)),
                    Err(e) => Err(DecodeFailure::Decoder(format!("resizing the decoded JPEG: {e}"))),
                });
            }
        }
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(DecodeFailure::Decoder("lost in resizing".into())))).collect()
}

/// `images` ([n, h, w, c]) turned upright by EXIF `orientation` (1-8;
/// other values leave them as they are). Fails only as libtorch does (a
/// flip copies: device memory).
pub fn upright(images: &Tensor, orientation: u8) -> Result<Tensor, tch::TchError> {
    let transpose = |t: &Tensor| t.f_permute([0, 2, 1, 3]);
    match orientation {
        2 => images.f_flip([2]),
        3 => images.f_flip([1, 2]),
        4 => images.f_flip([1]),
        5 => transpose(images),
        6 => transpose(&images.f_flip([1])?),
        7 => transpose(&images.f_flip([1, 2])?),
        8 => transpose(images)?.f_flip([1]),
        _ => Ok(images.shallow_clone()),
    }
}

/// Upright RGB images ([n, h, w, 3] uint8) as the model's input:
/// [n, height, width, channels] uint8, contiguous, stretched or
/// letterboxed as `how` says.
pub fn to_input(rgb: &Tensor, height: i64, width: i64, channels: i64, how: Resize) -> Result<Tensor, tch::TchError> {
    let device = rgb.device();
    // [n, 3, h, w] float: what the resize takes.
    let mut x = rgb.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)?;
    if channels == 1 {
        let luma = Tensor::f_from_slice(&[0.299f32, 0.587, 0.114])?.f_view([1, 3, 1, 1])?.f_to_device(device)?;
        x = x.f_mul(&luma)?.f_sum_dim_intlist(1, true, Kind::Float)?;
    }
    let size = x.size();
    let original = (size[3] as u32, size[2] as u32);
    let (left, top, w, h) = how.content(original, (width as u32, height as u32));
    let (left, top, w, h) = (i64::from(left), i64::from(top), i64::from(w), i64::from(h));
    let resized = if size[2..] == [h, w] { x } else { x.f_internal_upsample_bilinear2d_aa([h, w], false, None, None)? };
    let resized = match how {
        Resize::Stretch => resized,
        Resize::Letterbox { pad } => {
            let canvas = Tensor::f_full([size[0], size[1], height, width], f64::from(pad), (Kind::Float, device))?;
            canvas.f_narrow(2, top, h)?.f_narrow(3, left, w)?.f_copy_(&resized)?;
            canvas
        }
    };
    resized.f_round()?.f_clamp(0.0, 255.0)?.f_to_kind(Kind::Uint8)?.f_permute([0, 2, 3, 1])?.f_contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of one 2x3 single-channel image numbered 1..6, row by row.
    fn numbered() -> Tensor {
        Tensor::from_slice(&[1u8, 2, 3, 4, 5, 6]).view([1, 2, 3, 1])
    }

    fn rows(t: &Tensor) -> Vec<Vec<u8>> {
        let (h, w) = (t.size()[1], t.size()[2]);
        (0..h).map(|r| (0..w).map(|c| t.int64_value(&[0, r, c, 0]) as u8).collect()).collect()
    }

    #[test]
    fn each_exif_orientation_turns_the_image_upright() {
        // The stored pixels of a photo whose upright view is `numbered`,
        // for each orientation, undone by `upright`.
        let upright_view = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let stored: [(u8, Vec<u8>, [i64; 2]); 8] = [
            (1, vec![1, 2, 3, 4, 5, 6], [2, 3]),
            (2, vec![3, 2, 1, 6, 5, 4], [2, 3]),
            (3, vec![6, 5, 4, 3, 2, 1], [2, 3]),
            (4, vec![4, 5, 6, 1, 2, 3], [2, 3]),
            (5, vec![1, 4, 2, 5, 3, 6], [3, 2]),
            (6, vec![3, 6, 2, 5, 1, 4], [3, 2]),
            (7, vec![6, 3, 5, 2, 4, 1], [3, 2]),
            (8, vec![4, 1, 5, 2, 6, 3], [3, 2]),
        ];
        for (orientation, pixels, [h, w]) in stored {
            let image = Tensor::from_slice(&pixels).view([1, h, w, 1]);
            assert_eq!(rows(&upright(&image, orientation).unwrap()), upright_view, "orientation {orientation}");
        }
        assert_eq!(rows(&upright(&numbered(), 0).unwrap()), upright_view, "an unknown orientation changes nothing");
    }

    #[test]
    fn the_input_is_resized_and_converted_as_the_model_wants() {
        // A flat colour stays that colour through the antialiased resize.
        let rgb = Tensor::from_slice(&[200u8, 100, 50]).view([1, 1, 1, 3]).expand([2, 40, 60, 3], false).contiguous();
        let input = to_input(&rgb, 7, 5, 3, Resize::Stretch).unwrap();
        assert_eq!(input.size(), [2, 7, 5, 3]);
        assert_eq!(input.kind(), Kind::Uint8);
        assert_eq!(Vec::<u8>::try_from(input.flatten(0, -1)).unwrap()[..3], [200, 100, 50]);
        // Grayscale: BT.601 luma of (200, 100, 50) = 124.2 -> 124.
        let gray = to_input(&rgb, 4, 4, 1, Resize::Stretch).unwrap();
        assert_eq!(gray.size(), [2, 4, 4, 1]);
        assert!(Vec::<u8>::try_from(gray.flatten(0, -1)).unwrap().iter().all(|&v| v == 124));
    }

    /// Letterboxed as the gateway does it: the content where
    /// `Resize::content` puts it, the padding around it.
    #[test]
    fn a_letterboxed_input_has_the_content_where_the_gateway_puts_it() {
        // A 160x100 image into 64x64: content 64x40 at (0, 12), as the
        // gateway's own transform test has it.
        let rgb = Tensor::from_slice(&[200u8, 100, 50]).view([1, 1, 1, 3]).expand([1, 100, 160, 3], false).contiguous();
        let input = to_input(&rgb, 64, 64, 3, Resize::Letterbox { pad: 114 }).unwrap();
        assert_eq!(input.size(), [1, 64, 64, 3]);
        let at = |y: i64, x: i64| (0..3).map(|c| input.int64_value(&[0, y, x, c]) as u8).collect::<Vec<_>>();
        assert_eq!((at(11, 30), at(52, 30)), (vec![114; 3], vec![114; 3]), "padding above and below");
        assert_eq!((at(12, 0), at(51, 63)), (vec![200, 100, 50], vec![200, 100, 50]), "content's corners");
    }

    #[test]
    fn groups_are_resized_within_the_pixel_budget_and_failures_stay_their_own() {
        let flat = |v: u8, h: i64, w: i64| Tensor::from_slice(&[v, v, v]).view([1, 1, 3]).expand([h, w, 3], false).contiguous();
        let decoded = vec![
            Ok(flat(10, 8, 6)),
            Err(DecodeFailure::BadFile("corrupt".into())),
            Ok(flat(20, 8, 6)),
            Ok(flat(30, 6, 8)),
            Ok(flat(40, 8, 6)),
        ];
        let file = Encoded { bytes: b"", orientation: 1 };
        let images = [file, Encoded { bytes: b"", orientation: 1 }, Encoded { bytes: b"", orientation: 1 }, Encoded { bytes: b"", orientation: 6 }, Encoded { bytes: b"", orientation: 1 }];
        let value = |r: &Result<Tensor, DecodeFailure>| r.as_ref().map(|t| (t.size(), t.int64_value(&[0, 0, 0]))).map_err(Clone::clone);
        // 48 pixels an image: a budget of 50 resizes them one at a time.
        for budget in [50, 1 << 20] {
            let out: Vec<_> = resize_all(&decoded, &images, (4, 4, 3), Resize::Stretch, budget).iter().map(value).collect();
            assert_eq!(out[1], Err(DecodeFailure::BadFile("corrupt".into())), "budget {budget}");
            for (i, v) in [(0, 10), (2, 20), (3, 30), (4, 40)] {
                assert_eq!(out[i], Ok((vec![4, 4, 3], v)), "image {i}, budget {budget}");
            }
        }
    }

    #[test]
    fn a_cpu_host_says_why_it_does_not_decode() {
        let input = InputConfig { width: 4, height: 4, channels: 3, mean: vec![0.0; 3], std: vec![1.0; 3] };
        let e = JpegInput::open(&input, Resize::Stretch, &HostDecodeConfig::default(), Device::Cpu, None).err().expect("no GPU");
        assert!(e.contains("CUDA device"), "{e}");
    }
}
