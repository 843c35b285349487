//! CUDA streams and events (`shim/stream_shim.cpp`), for the pipeline's
//! two threads: the feeder uploads on a stream of its own
//! ([`use_own_stream`]) and records an event after each upload; the model
//! thread's stream waits for that event on the GPU ([`CudaEvent::block_current`]),
//! so that an upload overlaps the forward pass before it instead of
//! queueing behind it. The model thread also records an event after each
//! batch's read-back and waits for it on the CPU ([`CudaEvent::synchronize`]),
//! so it can queue the next batch before waiting for this one's answers.
//!
//! Off the GPU every function is a no-op: a CPU runs each call to the end
//! before it returns, so there is nothing to order. So are they in a shim
//! built without CUDA's headers ([`has_streams`] false): everything then
//! runs on one stream, and the read-back copies synchronously.

use std::ffi::{c_char, c_int};

use tch::Device;

use super::{ShimError, check};

/// The shim's opaque event type.
#[repr(C)]
struct ShimEvent {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn shim_has_streams() -> c_int;
    fn shim_stream_own(device: c_int, high_priority: c_int) -> *mut c_char;
    fn shim_stream_priority(device: c_int, out: *mut c_int) -> *mut c_char;
    fn shim_event_record(device: c_int, out: *mut *mut ShimEvent) -> *mut c_char;
    fn shim_event_block(event: *mut ShimEvent, device: c_int) -> *mut c_char;
    fn shim_event_synchronize(event: *mut ShimEvent) -> *mut c_char;
    fn shim_event_free(event: *mut ShimEvent);
}

/// Whether this build of the shim has CUDA streams and events.
pub fn has_streams() -> bool {
    // SAFETY: takes nothing, returns a constant.
    unsafe { shim_has_streams() != 0 }
}

/// How a thread's own stream is scheduled against the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The feeder's uploads: ahead of the forward pass's kernels.
    High,
    /// Work beside serving that no request waits on (the warm-up after
    /// READY).
    Low,
}

/// Gives the calling thread a CUDA stream of its own on `device` (from
/// libtorch's pool of that priority, not waiting for the legacy default
/// stream), for the rest of its life: what it queues from here on runs
/// beside the other threads' work. A no-op off the GPU or without streams.
pub fn use_own_stream(device: Device, priority: Priority) -> Result<(), ShimError> {
    let Device::Cuda(index) = device else { return Ok(()) };
    if !has_streams() {
        return Ok(());
    }
    // SAFETY: takes a device index and a flag, and changes this thread's
    // current stream; the shim catches every C++ exception.
    check(unsafe { shim_stream_own(index as c_int, c_int::from(priority == Priority::High)) })
}

/// The priority CUDA gives the calling thread's current stream on GPU
/// `index` (lower numbers run first).
pub fn current_priority(index: usize) -> Result<i32, ShimError> {
    let mut priority = 0;
    // SAFETY: `priority` is a live c_int the shim writes only on success.
    check(unsafe { shim_stream_priority(index as c_int, &mut priority) })?;
    Ok(priority)
}

/// A point in one stream's work: complete once everything queued on that
/// stream before it has run.
pub struct CudaEvent {
    raw: *mut ShimEvent,
    device: c_int,
}

// SAFETY: a c10::Event may be recorded on one thread and waited for on
// another (that is its purpose); this handle is used by one thread at a
// time (it moves with the batch from the feeder to the model thread).
unsafe impl Send for CudaEvent {}

impl CudaEvent {
    /// Records an event on the calling thread's current stream on
    /// `device`; None off the GPU or without streams (then there is only
    /// one stream, and its order is enough).
    pub fn record(device: Device) -> Result<Option<Self>, ShimError> {
        let Device::Cuda(index) = device else { return Ok(None) };
        if !has_streams() {
            return Ok(None);
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is written only on success, with a new event that
        // this handle then owns and frees once, in Drop.
        check(unsafe { shim_event_record(index as c_int, &mut raw) })?;
        Ok(Some(CudaEvent { raw, device: index as c_int }))
    }

    /// Makes the calling thread's current stream (on the event's device)
    /// wait for the event before running what is queued on it next. The
    /// CPU does not wait.
    pub fn block_current(&self) -> Result<(), ShimError> {
        // SAFETY: `raw` is a live event owned by this handle.
        check(unsafe { shim_event_block(self.raw, self.device) })
    }

    /// Waits on the CPU until the event has completed.
    pub fn synchronize(&self) -> Result<(), ShimError> {
        // SAFETY: `raw` is a live event owned by this handle.
        check(unsafe { shim_event_synchronize(self.raw) })
    }

    /// Waits on the CPU for what the calling thread has queued so far on
    /// its current stream on `device`: that stream alone, not the device,
    /// so other threads' work goes on. A no-op off the GPU.
    pub fn wait_for_current_stream(device: Device) -> Result<(), ShimError> {
        match Self::record(device)? {
            Some(event) => event.synchronize(),
            None => Ok(()),
        }
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by shim_event_record and is freed once, here.
        unsafe { shim_event_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_the_gpu_there_is_nothing_to_order() {
        use_own_stream(Device::Cpu, Priority::High).unwrap();
        use_own_stream(Device::Cpu, Priority::Low).unwrap();
        assert!(CudaEvent::record(Device::Cpu).unwrap().is_none());
    }

    /// On a GPU (skipped elsewhere): the feeder's stream runs above the
    /// warm-up's, which has the default priority of the legacy stream the
    /// model thread replays on.
    #[test]
    fn the_feeders_stream_runs_above_the_default_priority() {
        if !tch::Cuda::is_available() || !has_streams() {
            return;
        }
        let on_a_thread_of_its_own = |priority| {
            std::thread::spawn(move || {
                use_own_stream(Device::Cuda(0), priority).unwrap();
                current_priority(0).unwrap()
            })
            .join()
            .unwrap()
        };
        let default = current_priority(0).unwrap();
        let [high, low] = [Priority::High, Priority::Low].map(on_a_thread_of_its_own);
        assert_eq!((low, default), (0, 0), "the default priority");
        assert!(high < low, "high {high}, low {low}");
    }
}
