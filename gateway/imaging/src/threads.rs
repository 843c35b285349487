//! Which threads resize.
//!
//! fast_image_resize splits a resize over rayon's threads when it is
//! built with rayon, as it is here. Most resizes are small (a photo down to
//! a model's input, one per request) and a busy gateway runs many at once:
//! splitting each would cost hand-offs and buy nothing, so rayon's global
//! pool has one thread ([`keep_resizes_on_their_thread`]) and such a resize
//! runs on the request's own thread. A segmenter's mask is the other case:
//! one 512x512 mask brought to a 1920x1080 photo is 2 M pixels of work that
//! one request waits for, so it runs in [`on_mask_threads`], a pool of as many
//! threads as the machine has cores, on the cores the other requests leave
//! idle (the answer is the same to the byte: the resizer computes its
//! coefficients once and splits the rows).

use std::sync::LazyLock;

/// Makes rayon's global pool one thread, before anything uses it, so that
/// a resize outside [`on_mask_threads`] stays on the thread that asked for it. Call
/// at the start of a process that resizes; later calls do nothing.
pub fn keep_resizes_on_their_thread() {
    // Err means the pool was already made (a second call, or a test
    // harness's): either way nothing more to do.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).thread_name(|_| "rayon-one".into()).build_global();
}

/// Runs `work` in the masks' pool (as many threads as cores), where
/// fast_image_resize and the counts split it; on the calling thread if the
/// pool could not be made (out of threads: slower, never a failed answer).
pub fn on_mask_threads<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    static POOL: LazyLock<Option<rayon::ThreadPool>> = LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        rayon::ThreadPoolBuilder::new().num_threads(cores).thread_name(|i| format!("masks-{i}")).build().ok()
    });
    match POOL.as_ref() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}
