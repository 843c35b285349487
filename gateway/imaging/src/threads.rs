//! Which threads resize.
//!
//! fast_image_resize splits a resize over rayon's threads when it is
//! built with rayon, as it is here. Most resizes are small (a photo down to
//! a model's input, one per request) and a busy gateway runs many at once:
//! splitting each would cost hand-offs and buy nothing, so [`start`] makes
//! rayon's global pool one thread, and such a resize (bilinear) runs on the
//! request's own thread. A segmenter's mask is the other case: one 512x512
//! mask brought to a 1920x1080 photo is 2 M pixels of work that one request
//! waits for, so it runs in [`on_mask_threads`], a pool of as many threads
//! as the process may use cores, which share the cores with the requests'
//! threads. The answer is the same to the byte: the resizer computes its
//! coefficients once and splits the rows.
//!
//! A nearest-neighbour resize is split by rayon whatever the pool's size
//! (fast_image_resize 5's `resample_nearest`): on the one-thread global
//! pool every such resize of the process would queue on that thread, so
//! nearest is used only inside [`on_mask_threads`] (a class map).

use std::sync::LazyLock;

/// The masks' pool, made on first use ([`start`] makes it at once).
static MASKS: LazyLock<Result<rayon::ThreadPool, String>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    rayon::ThreadPoolBuilder::new().num_threads(cores).thread_name(|i| format!("masks-{i}")).build().map_err(|e| e.to_string())
});

/// Sets the threads up, before anything uses rayon: the global pool of
/// one thread, and the masks' pool. An error (the process is out of
/// threads, or rayon's global pool was made elsewhere first) should stop
/// the process at its start rather than serve on the wrong threads.
pub fn start() -> Result<(), String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "rayon-one".into())
        .build_global()
        .map_err(|e| format!("rayon's global pool: {e} (something used rayon before the gateway set its threads up)"))?;
    MASKS.as_ref().map(|_| ()).map_err(|e| format!("the masks' pool: {e}"))
}

/// Runs `work` in the masks' pool, where fast_image_resize and the counts
/// split it. In a process that did not call [`start`] (a test, a
/// benchmark), a pool that could not be made leaves `work` to rayon's
/// global pool.
pub fn on_mask_threads<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match MASKS.as_ref() {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}
