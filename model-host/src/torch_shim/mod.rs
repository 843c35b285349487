//! What tch does not expose, through the C++ shim in `shim/torch_shim.cpp`:
//! a module loaded, frozen and `optimize_for_inference`d, its forward pass
//! under `c10::InferenceMode`, and CUDA graphs captured from it; in
//! [`jpeg`] (`shim/jpeg_shim.cpp`), JPEG decode on the GPU with nvJPEG; and
//! in [`stream`] (`shim/stream_shim.cpp`), CUDA streams and events.
//!
//! The crate's one other home of `unsafe` besides `protocol::shm`: every
//! call into the shim is here, each with its `// SAFETY:`. The shim turns
//! every C++ exception into an error message, so nothing unwinds across the
//! boundary; handles are freed exactly once, by `Drop`. Tensors cross as
//! tch's own `C_tensor` (an `at::Tensor*`): borrowed going in, owned coming
//! out.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;

use tch::{Device, Kind, Tensor};
use thiserror::Error;
use torch_sys::C_tensor;

#[derive(Debug, Error, Clone, PartialEq)]
#[error("{0}")]
pub struct ShimError(pub String);

/// The shim's opaque module type.
#[repr(C)]
struct ShimModule {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn shim_free_error(error: *mut c_char);
    fn shim_has_cuda_graphs() -> c_int;
    fn shim_module_load(
        path: *const c_char,
        device: c_int,
        dtype: c_int,
        report: Option<extern "C" fn(context: *mut c_void, read: u64, total: u64)>,
        context: *mut c_void,
        streamed: *mut u64,
        fallback: *mut *mut c_char,
        out: *mut *mut ShimModule,
    ) -> *mut c_char;
    fn shim_module_freeze(module: *mut ShimModule, optimize: c_int, counts: *mut u64) -> *mut c_char;
    fn shim_module_optimize(module: *mut ShimModule) -> *mut c_char;
    fn shim_module_frozen_copy(module: *const ShimModule, optimize: c_int, counts: *mut u64, out: *mut *mut ShimModule) -> *mut c_char;
    fn shim_module_plan_plainly(module: *mut ShimModule);
    #[cfg(test)]
    fn shim_fingerprinted_equal(a: *const C_tensor, b: *const C_tensor, out: *mut c_int) -> *mut c_char;
    fn shim_module_save(module: *mut ShimModule, path: *const c_char) -> *mut c_char;
    fn shim_torch_version() -> c_int;
    fn shim_module_weight_bytes(module: *mut ShimModule, out: *mut u64) -> *mut c_char;
    fn shim_module_forward(
        module: *mut ShimModule,
        inputs: *const *const C_tensor,
        count: c_int,
        names: *const *const c_char,
        expected: c_int,
        outs: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn shim_module_method(module: *mut ShimModule, name: *const c_char, inputs: *const *const C_tensor, count: c_int, out: *mut *mut C_tensor) -> *mut c_char;
    fn shim_module_free(module: *mut ShimModule);
    fn shim_pinned_empty(len: i64, out: *mut *mut C_tensor) -> *mut c_char;
    fn shim_graph_capture(
        module: *mut ShimModule,
        inputs: *const *const C_tensor,
        count: c_int,
        names: *const *const c_char,
        expected: c_int,
        warmups: c_int,
        graph: *mut *mut c_void,
        outputs: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn shim_graph_replay(graph: *mut c_void) -> *mut c_char;
    fn shim_graph_free(graph: *mut c_void);
    fn shim_cuda_mem_info(device: c_int, free_bytes: *mut u64, total_bytes: *mut u64) -> *mut c_char;
}

/// Turns the shim's error return into a Result.
fn check(error: *mut c_char) -> Result<(), ShimError> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim
    // malloc'd for us; it is read once here and freed by the shim's free.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    // SAFETY: `error` came from the shim and is freed exactly once.
    unsafe { shim_free_error(error) };
    Err(ShimError(message))
}

/// libtorch's version, as "2.11.0".
pub fn torch_version() -> String {
    // SAFETY: a pure function of the shim's build, no arguments.
    let v = unsafe { shim_torch_version() };
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

/// Whether this build of the shim can capture CUDA graphs.
pub fn has_cuda_graphs() -> bool {
    // SAFETY: takes nothing, returns a constant.
    unsafe { shim_has_cuda_graphs() != 0 }
}

/// Free and total memory of CUDA device `index`, in bytes (cudaMemGetInfo).
pub fn cuda_memory(index: usize) -> Result<(u64, u64), ShimError> {
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: both out-pointers are valid for the call; the shim writes them
    // only on success and catches every C++ exception.
    check(unsafe { shim_cuda_mem_info(index as c_int, &mut free, &mut total) })?;
    Ok((free, total))
}

/// What freezing did with its constant comparisons: how many pairs of
/// tensor constants libtorch's passes compared, and how many of those a
/// fingerprint of each tensor settled without a comparison on the device
/// (`shim/freeze_equal.cpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstantComparisons {
    pub compared: u64,
    pub by_fingerprint: u64,
}

/// `a.equal(b)` as freezing compares constants: settled by fingerprints
/// where they differ, on any device. Exposed for the tests: freezing uses
/// it on the GPU only.
#[cfg(test)]
pub fn fingerprinted_equal(a: &Tensor, b: &Tensor) -> Result<bool, ShimError> {
    let mut out: c_int = 0;
    // SAFETY: both tensors are live and only read for the call; the
    // out-pointer is valid for it; the shim catches every C++ exception.
    check(unsafe { shim_fingerprinted_equal(a.as_ptr(), b.as_ptr(), &mut out) })?;
    Ok(out != 0)
}

fn device_code(device: Device) -> c_int {
    match device {
        Device::Cuda(n) => n as c_int,
        _ => -1,
    }
}

/// c10::ScalarType's number for the floating dtypes a model may be cast to.
fn scalar_type(kind: Kind) -> Result<c_int, ShimError> {
    match kind {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::BFloat16 => Ok(15),
        other => Err(ShimError(format!("cannot cast a model to {other:?}"))),
    }
}

fn tensor_ptrs(inputs: &[&Tensor]) -> Vec<*const C_tensor> {
    inputs.iter().map(|t| t.as_ptr()).collect()
}

/// A C array of pointers, or null when there are none.
fn null_or<T>(pointers: &[*const T]) -> *const *const T {
    if pointers.is_empty() { std::ptr::null() } else { pointers.as_ptr() }
}

/// What forward() returns, as the shim flattens it: one unnamed tensor (a
/// classifier's logits), or model.toml's outputs, matched by position in a
/// tuple or list and by name in a dict.
#[derive(Debug, Clone, Default)]
pub enum OutputNames {
    #[default]
    One,
    Named(Vec<CString>),
}

impl OutputNames {
    pub fn named<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, ShimError> {
        let names = names.into_iter().map(|n| CString::new(n).map_err(|e| ShimError(e.to_string()))).collect::<Result<_, _>>()?;
        Ok(OutputNames::Named(names))
    }

    fn len(&self) -> usize {
        match self {
            OutputNames::One => 1,
            OutputNames::Named(names) => names.len(),
        }
    }

    /// The names for the shim (null for `One`) and the pointers' owner.
    fn pointers(&self) -> Vec<*const c_char> {
        match self {
            OutputNames::One => Vec::new(),
            OutputNames::Named(names) => names.iter().map(|n| n.as_ptr()).collect(),
        }
    }
}

/// Owned tensors from `count` out-pointers the shim filled on success.
///
/// # Safety
/// Each pointer must be a valid, owned `at::Tensor*` handed over by the shim.
unsafe fn owned_tensors(raw: Vec<*mut C_tensor>) -> Vec<Tensor> {
    // SAFETY: the caller guarantees each pointer is owned and valid.
    raw.into_iter().map(|p| unsafe { Tensor::from_ptr(p) }).collect()
}

/// A TorchScript module owned by the shim.
pub struct Module {
    raw: *mut ShimModule,
    /// How forward()'s result is flattened into tensors.
    outputs: OutputNames,
    streamed: Streamed,
}

/// How a module's tensor records reached its device: streamed by offset
/// (`shim/weights_stream.cpp`), or, where that loader could not take the
/// file, read by `torch::jit::load` (`plain_because` says why).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Streamed {
    pub records: u64,
    pub bytes: u64,
    pub plain_because: Option<String>,
}

// SAFETY: a torch::jit::Module may be moved between threads; this handle is
// only used through `&mut self` or from one thread at a time (the model
// thread owns it), as tch's own CModule is.
unsafe impl Send for Module {}

// SAFETY: the only `&self` method is `forward`, and torch::jit::Module's
// forward may run on several threads at once (TorchScript's graph executor
// guards its own caches; multi-threaded inference on one module is a use
// libtorch supports, and tch's CModule is Sync on the same grounds). The
// host does it only during warm-up, where each thread's first pass of a
// new batch shape pays cuDNN's per-shape set-up on the CPU in parallel.
unsafe impl Sync for Module {}

impl Module {
    /// Loads `path` onto `device`, in eval mode, cast to `dtype` (None keeps
    /// the file's dtypes).
    pub fn load(path: &Path, device: Device, dtype: Option<Kind>) -> Result<Self, ShimError> {
        Self::load_reporting(path, device, dtype, &mut |_, _| {})
    }

    /// [`Self::load`], telling `progress` (bytes read, file size) after
    /// every read of the file, on this thread.
    pub fn load_reporting(path: &Path, device: Device, dtype: Option<Kind>, progress: &mut dyn FnMut(u64, u64)) -> Result<Self, ShimError> {
        extern "C" fn report(context: *mut c_void, read: u64, total: u64) {
            // SAFETY: `context` is the `&mut &mut dyn FnMut` below, alive
            // and not otherwise borrowed for the whole of the load, which
            // calls this only on its own thread, never after it returns.
            let progress = unsafe { &mut *context.cast::<&mut dyn FnMut(u64, u64)>() };
            progress(read, total);
        }
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| ShimError(e.to_string()))?;
        let dtype = match dtype {
            None => -1,
            Some(kind) => scalar_type(kind)?,
        };
        let mut raw = std::ptr::null_mut();
        let mut progress = progress;
        let context = (&mut progress as *mut &mut dyn FnMut(u64, u64)).cast::<c_void>();
        let mut streamed = [0u64; 2];
        let mut fallback: *mut c_char = std::ptr::null_mut();
        // SAFETY: `c_path` is NUL-terminated and outlives the call; `context`
        // points at `progress`, which outlives it too; `streamed` has the two
        // slots the shim writes; `fallback` and `raw` are written by the shim
        // (`raw` only on success).
        let loaded = check(unsafe {
            shim_module_load(c_path.as_ptr(), device_code(device), dtype, Some(report), context, streamed.as_mut_ptr(), &mut fallback, &mut raw)
        });
        // Taken (and freed) whatever the outcome: check() frees only the error.
        let plain_because = (!fallback.is_null()).then(|| {
            // SAFETY: a non-null `fallback` is a NUL-terminated message the
            // shim malloc'd for us; it is read once, then freed once.
            let message = unsafe { CStr::from_ptr(fallback) }.to_string_lossy().into_owned();
            // SAFETY: as above; not used after this.
            unsafe { shim_free_error(fallback) };
            message
        });
        loaded?;
        let streamed = Streamed { records: streamed[0], bytes: streamed[1], plain_because };
        match &streamed.plain_because {
            None => tracing::debug!(records = streamed.records, bytes = streamed.bytes, "tensor records streamed onto the device"),
            Some(why) => tracing::info!(reason = %why, "model read by torch::jit::load"),
        }
        let module = Module { raw, outputs: OutputNames::One, streamed };
        // Loaded: all of it counts as read (the archive's directory and
        // records libtorch never needed are not read at all).
        if let Ok(size) = std::fs::metadata(path).map(|m| m.len()) {
            progress(size, size);
        }
        Ok(module)
    }

    /// The module's method `name`(inputs...), which returns one tensor,
    /// in the caller's grad mode (an iterative model's start, step, finish).
    pub fn method(&self, name: &str, inputs: &[&Tensor]) -> Result<Tensor, ShimError> {
        let c_name = CString::new(name).map_err(|e| ShimError(e.to_string()))?;
        let ptrs = tensor_ptrs(inputs);
        let mut out = std::ptr::null_mut();
        // SAFETY: `self.raw` is a live module; `c_name` and the input
        // tensors outlive the call and are only read; `out` is written only
        // on success, with a new tensor that we then own.
        check(unsafe { shim_module_method(self.raw, c_name.as_ptr(), null_or(&ptrs), ptrs.len() as c_int, &mut out) })?;
        // SAFETY: on success `out` is an owned at::Tensor* from the shim.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// How the tensor records were read.
    pub fn streamed(&self) -> &Streamed {
        &self.streamed
    }

    /// Declares what forward() returns (one tensor until this is called).
    pub fn with_outputs(mut self, outputs: OutputNames) -> Self {
        self.outputs = outputs;
        self
    }

    /// `torch.jit.freeze`, then `optimize_for_inference` if asked. On
    /// error the module is unchanged and still usable.
    /// Bytes the module's parameters and buffers hold on its device, each
    /// storage once. Read it before [`Self::freeze`], which makes them
    /// constants that this no longer sees.
    pub fn weight_bytes(&self) -> Result<u64, ShimError> {
        let mut bytes = 0u64;
        // SAFETY: `self.raw` is a live module owned by this handle, only
        // read; the out-pointer is valid for the call and written only on
        // success; the shim catches every C++ exception.
        check(unsafe { shim_module_weight_bytes(self.raw, &mut bytes) })?;
        Ok(bytes)
    }

    pub fn freeze(&mut self, optimize: bool) -> Result<ConstantComparisons, ShimError> {
        let mut counts = [0u64; 2];
        // SAFETY: `self.raw` is a live module owned by this handle;
        // `counts` has the two slots the shim writes, and outlives the call.
        check(unsafe { shim_module_freeze(self.raw, c_int::from(optimize), counts.as_mut_ptr()) })?;
        Ok(ConstantComparisons { compared: counts[0], by_fingerprint: counts[1] })
    }

    /// A frozen copy of this module (then `optimize_for_inference`d if
    /// asked), this one left as it was: it may go on serving on other
    /// threads meanwhile. The copy shares this module's tensors, except
    /// those freezing remakes (folded batch norms, transposed linear
    /// weights: held twice while both modules live); its outputs are
    /// declared alike.
    pub fn frozen_copy(&self, optimize: bool) -> Result<(Module, ConstantComparisons), ShimError> {
        let mut counts = [0u64; 2];
        let mut raw = std::ptr::null_mut();
        // SAFETY: `self.raw` is a live module, only read (the shim's freeze
        // clones it; forward passes on other threads only read it too);
        // `counts` has the two slots the shim writes; `raw` is written only
        // on success, with a new module that we then own.
        check(unsafe { shim_module_frozen_copy(self.raw, c_int::from(optimize), counts.as_mut_ptr(), &mut raw) })?;
        let copy = Module { raw, outputs: self.outputs.clone(), streamed: self.streamed.clone() };
        Ok((copy, ConstantComparisons { compared: counts[0], by_fingerprint: counts[1] }))
    }

    /// Plans this module's forward passes without TorchScript's graph
    /// executor optimisation, as a frozen module's are: for a module that
    /// serves only until [`Self::frozen_copy`] replaces it.
    pub fn plan_plainly(&mut self) {
        // SAFETY: `self.raw` is a live module owned by this handle.
        unsafe { shim_module_plan_plainly(self.raw) }
    }

    /// `optimize_for_inference` on a module that is frozen already (as
    /// one saved frozen and loaded again is). On error the module is
    /// unchanged and still usable.
    pub fn optimize(&mut self) -> Result<(), ShimError> {
        // SAFETY: `self.raw` is a live module owned by this handle.
        check(unsafe { shim_module_optimize(self.raw) })
    }

    /// Writes the module to `path` as a TorchScript archive.
    pub fn save(&self, path: &Path) -> Result<(), ShimError> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| ShimError(e.to_string()))?;
        // SAFETY: `self.raw` is a live module owned by this handle;
        // `c_path` is NUL-terminated and outlives the call.
        check(unsafe { shim_module_save(self.raw, c_path.as_ptr()) })
    }

    /// `forward(inputs...)` under InferenceMode: its outputs, in the
    /// order [`Self::with_outputs`] declared.
    pub fn forward_all(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, ShimError> {
        let ptrs = tensor_ptrs(inputs);
        let names = self.outputs.pointers();
        let mut outs = vec![std::ptr::null_mut(); self.outputs.len()];
        // SAFETY: the module is live; the input pointers borrow tensors that
        // outlive the call; `names` is null or `outs.len()` NUL-terminated
        // strings owned by `self.outputs`; on success the shim fills every
        // one of `outs` with a new heap tensor whose ownership passes to us.
        check(unsafe {
            shim_module_forward(self.raw, ptrs.as_ptr(), ptrs.len() as c_int, null_or(&names), outs.len() as c_int, outs.as_mut_ptr())
        })?;
        // SAFETY: on success every pointer is valid and owned (see above).
        Ok(unsafe { owned_tensors(outs) })
    }

    /// [`Self::forward_all`] of a module that returns one tensor (the
    /// shim's own tests; the host always goes through forward_all).
    #[cfg(test)]
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, ShimError> {
        let mut outs = self.forward_all(inputs)?;
        outs.pop().filter(|_| outs.is_empty()).ok_or_else(|| ShimError(format!("forward() returned {} outputs, not one", outs.len() + 1)))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by shim_module_load and is freed once, here.
        unsafe { shim_module_free(self.raw) }
    }
}

/// Host memory a batch is gathered into before its copy to the device:
/// page-locked (pinned) for a GPU, so that the copy is one DMA queued
/// behind the running batch instead of a staging copy the CPU makes first.
pub struct HostBuffer {
    /// A contiguous uint8 CPU tensor of `len` bytes that only this struct
    /// refers to until [`Self::into_tensor`].
    tensor: Tensor,
    len: usize,
}

impl HostBuffer {
    /// `len` bytes, pinned (needs a CUDA device) or plain, uninitialised.
    pub fn new(len: usize, pinned: bool) -> Result<Self, ShimError> {
        let tensor = if pinned {
            let mut out = std::ptr::null_mut();
            // SAFETY: `out` is written only on success, with a new heap
            // tensor whose ownership passes to the `Tensor` made from it.
            check(unsafe { shim_pinned_empty(len as i64, &mut out) })?;
            // SAFETY: `out` is a valid, owned at::Tensor* (see above).
            unsafe { Tensor::from_ptr(out) }
        } else {
            Tensor::f_empty([len as i64], (Kind::Uint8, Device::Cpu)).map_err(|e| ShimError(e.to_string()))?
        };
        Ok(HostBuffer { tensor, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, to gather a batch into.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        let data = self.tensor.data_ptr().cast::<u8>();
        // SAFETY: the tensor is a contiguous uint8 CPU tensor of exactly
        // `len` bytes (made above, never resized); no other handle to it
        // exists until `into_tensor` consumes self, so this borrow of self
        // is the only access to the memory for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(data, self.len) }
    }

    /// The buffer as a 1-D uint8 tensor, to copy to the device.
    pub fn into_tensor(self) -> Tensor {
        self.tensor
    }
}

/// The bytes of a contiguous CPU tensor (read-back outputs), borrowed for
/// as long as the tensor is: read straight into a slot, with no copy to a
/// `Vec` first.
pub fn host_bytes(tensor: &Tensor) -> Result<&[u8], ShimError> {
    if tensor.device() != Device::Cpu || !tensor.is_contiguous() {
        return Err(ShimError(format!("host_bytes needs a contiguous CPU tensor; got {:?} on {:?}", tensor.size(), tensor.device())));
    }
    let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: a contiguous CPU tensor's data is `numel * element size`
    // bytes at data_ptr, alive while the tensor (borrowed for the slice's
    // lifetime) is; the read-back tensors this is used on have no other
    // handle that writes them.
    Ok(unsafe { std::slice::from_raw_parts(tensor.data_ptr().cast::<u8>(), len) })
}

/// A CUDA graph of one forward pass over fixed input tensors. Write the
/// next batch into [`Self::inputs`] (on the stream replays run on), then
/// [`Self::replay`]; its outputs then hold the result, until the next
/// replay overwrites them.
pub struct CudaGraph {
    raw: *mut c_void,
    inputs: Vec<Tensor>,
    /// In the module's declared order (see [`OutputNames`]).
    outputs: Vec<Tensor>,
}

// SAFETY: as for `Module`; the graph is replayed from one thread at a time.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Captures `module.forward(inputs)` after `warmups` eager passes. The
    /// graph keeps `inputs` (its static inputs) and reads them at each replay.
    pub fn capture(module: &Module, inputs: Vec<Tensor>, warmups: u32) -> Result<Self, ShimError> {
        let borrowed: Vec<&Tensor> = inputs.iter().collect();
        let ptrs = tensor_ptrs(&borrowed);
        let names = module.outputs.pointers();
        let mut raw = std::ptr::null_mut();
        let mut outputs = vec![std::ptr::null_mut(); module.outputs.len()];
        // SAFETY: the module is live; the input pointers borrow `inputs`,
        // which this struct keeps alive as long as the graph; `names` is
        // null or one string per output, owned by the module; `raw` and
        // every one of `outputs` are written only on success and owned
        // from then on.
        check(unsafe {
            shim_graph_capture(
                module.raw,
                ptrs.as_ptr(),
                ptrs.len() as c_int,
                null_or(&names),
                outputs.len() as c_int,
                warmups as c_int,
                &mut raw,
                outputs.as_mut_ptr(),
            )
        })?;
        // SAFETY: on success every pointer is valid and owned (see above).
        let outputs = unsafe { owned_tensors(outputs) };
        Ok(CudaGraph { raw, inputs, outputs })
    }

    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// Queues one replay on the current CUDA stream; its outputs, in the
    /// module's declared order.
    pub fn replay(&self) -> Result<&[Tensor], ShimError> {
        // SAFETY: `raw` is a live graph owned by this struct.
        check(unsafe { shim_graph_replay(self.raw) })?;
        Ok(&self.outputs)
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by shim_graph_capture and is freed once, here.
        unsafe { shim_graph_free(self.raw) }
    }
}

pub mod jpeg;
pub mod stream;

#[cfg(test)]
mod tests;
