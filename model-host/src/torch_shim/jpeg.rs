//! JPEG decode on the GPU (nvJPEG), through `shim/jpeg_shim.cpp`.
//!
//! libnvjpeg is opened at run time from the first of: the path given
//! (`--nvjpeg`), the loader's own search (`libnvjpeg.so.13`, found through
//! LD_LIBRARY_PATH or the ld cache), and the nvidia-nvjpeg wheel beside
//! libtorch (`site-packages/nvidia/cu13/lib`). Each image fails alone: a
//! bad JPEG gets its own message and the others in the batch decode.

use std::ffi::{CString, c_char, c_int};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use tch::Tensor;
use torch_sys::C_tensor;

use super::{ShimError, check};

/// The shim's opaque decoder type.
#[repr(C)]
struct ShimJpeg {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn shim_has_nvjpeg() -> c_int;
    fn shim_jpeg_open(library: *const c_char, device: c_int, out: *mut *mut ShimJpeg, hardware: *mut c_int) -> *mut c_char;
    fn shim_jpeg_decode(
        decoder: *mut ShimJpeg,
        count: c_int,
        data: *const *const u8,
        lens: *const usize,
        max_pixels: i64,
        outs: *mut *mut C_tensor,
        errors: *mut *mut c_char,
        kinds: *mut c_int,
    ) -> *mut c_char;
    fn shim_jpeg_stream_enter(decoder: *mut ShimJpeg) -> *mut c_char;
    fn shim_jpeg_stream_leave(decoder: *mut ShimJpeg) -> *mut c_char;
    fn shim_jpeg_free(decoder: *mut ShimJpeg);
    fn shim_jpeg_counts(decoder: *mut ShimJpeg, on_hardware: *mut i64, on_default: *mut i64);
}

/// Whether this build of the shim has nvJPEG's types (it may still not
/// find the library at run time).
pub fn built_with_nvjpeg() -> bool {
    // SAFETY: takes nothing, returns a constant.
    unsafe { shim_has_nvjpeg() != 0 }
}

/// The library's soname for CUDA 13 (torch 2.11's CUDA).
const SONAME: &str = "libnvjpeg.so.13";

/// Where to look for libnvjpeg, in order; see the module's doc.
pub fn library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    let mut found = vec![PathBuf::from(SONAME)];
    if let Some(lib) = option_env!("MODEL_HOST_LIBTORCH_LIB").map(PathBuf::from) {
        // .../site-packages/torch/lib -> .../site-packages/nvidia/cu13/lib
        if let Some(site) = lib.canonicalize().ok().and_then(|l| l.parent()?.parent().map(Path::to_path_buf)) {
            found.push(site.join("nvidia/cu13/lib").join(SONAME));
        }
    }
    found
}

/// Why one image was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeFailure {
    /// The file: not a JPEG nvJPEG reads, corrupt, over the pixel limit
    /// (a 400 for its request).
    BadFile(String),
    /// The decoder: device memory, the GPU (a 500).
    Decoder(String),
}

/// nvJPEG's decoders for one CUDA device.
pub struct JpegDecoder {
    raw: *mut ShimJpeg,
    /// Whether the GPU's hardware JPEG engines are used (else nvJPEG's
    /// default backend only).
    pub hardware: bool,
    /// The library that was opened.
    pub library: PathBuf,
}

// SAFETY: the decoder is used from one thread at a time (a decode-stage
// thread owns it); nvJPEG's handle may move between threads, and its
// per-decode state is only touched through `&mut self`.
unsafe impl Send for JpegDecoder {}

impl JpegDecoder {
    /// Opens the first library of `candidates` that loads, for `device`.
    /// The error lists why each one failed.
    pub fn open(candidates: &[PathBuf], device: usize) -> Result<Self, ShimError> {
        if !built_with_nvjpeg() {
            return Err(ShimError("this model-host was built without nvJPEG (no nvjpeg.h beside libtorch: scripts/setup installs it)".into()));
        }
        let mut why = Vec::new();
        for library in candidates {
            let Ok(name) = CString::new(library.as_os_str().as_encoded_bytes()) else {
                why.push(format!("{}: not a valid path", library.display()));
                continue;
            };
            let (mut raw, mut hardware) = (std::ptr::null_mut(), 0);
            // SAFETY: `name` is NUL-terminated and outlives the call; `raw`
            // and `hardware` are written only on success.
            match check(unsafe { shim_jpeg_open(name.as_ptr(), device as c_int, &mut raw, &mut hardware) }) {
                Ok(()) => return Ok(JpegDecoder { raw, hardware: hardware != 0, library: library.clone() }),
                Err(e) => why.push(e.0),
            }
        }
        Err(ShimError(why.join("; ")))
    }

    /// Runs `work` with this decoder's CUDA stream as the calling thread's
    /// current one, so that decodes and the libtorch work on their outputs
    /// (orientation, resize) queue there, beside the model's stream; then
    /// gives the thread its stream back and waits for what was queued.
    /// Tensors made in `work` are complete when this returns Ok. The files
    /// decoded live for `'data`, longer than this call: nvJPEG may read
    /// them until the wait, which also comes if `work` panics (the panic
    /// then goes on). `work` gets one decode: a second on the same state
    /// before the wait would reuse buffers the first may still be reading.
    pub fn on_own_stream<'data, T>(&mut self, work: impl FnOnce(OnStream<'_, 'data>) -> T) -> Result<T, ShimError> {
        // SAFETY: the decoder is live and used only here (`&mut self`).
        check(unsafe { shim_jpeg_stream_enter(self.raw) })?;
        let raw = self.raw;
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(OnStream { decoder: self, _data: PhantomData })));
        // SAFETY: as above (the borrow given to `work` has ended); the
        // enter succeeded, so this restores the thread's stream.
        let left = check(unsafe { shim_jpeg_stream_leave(raw) });
        let done = done.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        left.map(|()| done)
    }
}

/// A decoder while its stream stands in for the thread's
/// ([`JpegDecoder::on_own_stream`]); files decoded live for `'data`.
pub struct OnStream<'d, 'data> {
    decoder: &'d mut JpegDecoder,
    _data: PhantomData<&'data [u8]>,
}

impl<'data> OnStream<'_, 'data> {
    /// Queues each of `images`' decode into a [height, width, 3] uint8 RGB
    /// tensor on the decoder's device. An image over `max_pixels`, or one
    /// nvJPEG cannot read, gets its own error. Once per stream turn.
    pub fn decode(self, images: &[&'data [u8]], max_pixels: u64) -> Result<Vec<Result<Tensor, DecodeFailure>>, ShimError> {
        let n = images.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let data: Vec<*const u8> = images.iter().map(|i| i.as_ptr()).collect();
        let lens: Vec<usize> = images.iter().map(|i| i.len()).collect();
        let mut outs: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); n];
        let mut errors: Vec<*mut c_char> = vec![std::ptr::null_mut(); n];
        let mut kinds: Vec<c_int> = vec![0; n];
        let max_pixels = i64::try_from(max_pixels).unwrap_or(i64::MAX);
        // SAFETY: the decoder is live and used only here (`&mut`), once,
        // inside on_own_stream as the shim asks; `data`/`lens` describe `n`
        // slices that live for 'data, past the stream's wait; `outs` and
        // `errors` have room for `n` entries (so have `kinds`), which the
        // shim sets only on success.
        check(unsafe {
            shim_jpeg_decode(
                self.decoder.raw,
                n as c_int,
                data.as_ptr(),
                lens.as_ptr(),
                max_pixels,
                outs.as_mut_ptr(),
                errors.as_mut_ptr(),
                kinds.as_mut_ptr(),
            )
        })?;
        Ok(outs
            .into_iter()
            .zip(errors)
            .zip(kinds)
            .map(|((out, error), kind)| {
                if out.is_null() {
                    // A null error would be the shim's bug; it still fails alone.
                    let message = check(error).err().map_or_else(|| "no image and no error from nvJPEG".to_string(), |e| e.0);
                    return Err(if kind == 1 { DecodeFailure::BadFile(message) } else { DecodeFailure::Decoder(message) });
                }
                // SAFETY: a non-null entry is a new heap at::Tensor* the
                // shim gave up; the `Tensor` made here owns it.
                Ok(unsafe { Tensor::from_ptr(out) })
            })
            .collect())
    }
}

impl JpegDecoder {
    /// Images decoded so far: (by the hardware engines, by the default backend).
    pub fn counts(&self) -> (u64, u64) {
        let (mut hardware, mut default) = (0i64, 0i64);
        // SAFETY: the decoder is live; the shim only reads its counters
        // and writes the two out-pointers, valid for the call.
        unsafe { shim_jpeg_counts(self.raw, &mut hardware, &mut default) };
        (hardware as u64, default as u64)
    }
}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by shim_jpeg_open and is freed once, here.
        unsafe { shim_jpeg_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_library_is_the_only_candidate() {
        assert_eq!(library_candidates(Some(Path::new("/x/libnvjpeg.so"))), vec![PathBuf::from("/x/libnvjpeg.so")]);
        let searched = library_candidates(None);
        assert_eq!(searched[0], PathBuf::from(SONAME));
    }

    #[test]
    fn a_missing_library_is_an_error_naming_each_candidate() {
        let candidates = [PathBuf::from("/nonexistent/libnvjpeg.so.13"), PathBuf::from("libnvjpeg-not-here.so")];
        let e = JpegDecoder::open(&candidates, 0).err().expect("no such library");
        if built_with_nvjpeg() {
            assert!(e.0.contains("/nonexistent/libnvjpeg.so.13") && e.0.contains("libnvjpeg-not-here.so"), "{e}");
        } else {
            assert!(e.0.contains("without nvJPEG"), "{e}");
        }
    }
}
