//! The bounded queue between finished spans and the OTLP exporter.
//!
//! A span ends on whatever thread finishes it (a request's task, the
//! host's model thread); [`QueuedExport::on_end`] only tries to put it on
//! a bounded channel and, when that is full, drops it and counts it. One
//! thread of its own takes spans off, gathers them into batches (full, or
//! `delay` old) and exports each on the tokio runtime the exporter was
//! made on, so that a slow or absent collector never holds up a request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Spans that were never exported, by reason: for the daemons' metrics.
#[derive(Debug)]
pub struct Dropped {
    /// The queue was full when the span ended.
    pub queue_full: AtomicU64,
    /// The exporter failed to send the batch the span was in.
    pub export_failed: AtomicU64,
}

impl Dropped {
    pub const fn new() -> Self {
        Self { queue_full: AtomicU64::new(0), export_failed: AtomicU64::new(0) }
    }

    /// (reason, spans) for a metric's label and value.
    pub fn by_reason(&self) -> [(&'static str, u64); 2] {
        [("queue_full", self.queue_full.load(Relaxed)), ("export_failed", self.export_failed.load(Relaxed))]
    }
}

impl Default for Dropped {
    fn default() -> Self {
        Self::new()
    }
}

/// How much the queue holds and how the thread batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Spans waiting at most.
    pub queue: usize,
    /// Spans per export at most.
    pub batch: usize,
    /// How long a span may wait for a fuller batch.
    pub delay: Duration,
}

/// What the export thread is asked to do.
enum Command {
    Export(Box<SpanData>),
    /// Export what is gathered, then say so.
    Flush(SyncSender<()>),
    /// Export what is gathered, shut the exporter down, say so and stop.
    Stop(SyncSender<()>),
}

/// A span processor that never blocks the thread that ends a span.
#[derive(Debug)]
pub struct QueuedExport {
    to_thread: SyncSender<Command>,
    dropped: &'static Dropped,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl QueuedExport {
    /// Starts the export thread; the exporter is given `resource` (the
    /// service's name and attributes) first. Must be called inside the
    /// tokio runtime the exports are to run on.
    pub fn start<E: SpanExporter + 'static>(mut exporter: E, resource: Resource, limits: Limits, dropped: &'static Dropped) -> std::io::Result<Self> {
        exporter.set_resource(&resource);
        let runtime = tokio::runtime::Handle::current();
        let (to_thread, commands) = sync_channel(limits.queue.max(1));
        let thread = std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || export_until_stopped(exporter, commands, limits, runtime, dropped))?;
        Ok(Self { to_thread, dropped, thread: Mutex::new(Some(thread)) })
    }

    /// Sends a command that must get through (not from the request path)
    /// and waits, at most `timeout`, for its answer.
    fn ask(&self, command: impl FnOnce(SyncSender<()>) -> Command, timeout: Duration) -> OTelSdkResult {
        let (done, answered) = sync_channel(1);
        self.to_thread.send(command(done)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueuedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.to_thread.try_send(Command::Export(Box::new(span))) {
            self.dropped.queue_full.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Command::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let asked = self.ask(Command::Stop, timeout);
        if asked.is_ok()
            && let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take())
        {
            let _ = thread.join();
        }
        asked
    }

    // The exporter was given the resource at start; the provider's is the same.
    fn set_resource(&mut self, _resource: &Resource) {}
}

/// The export thread: gather spans, export a batch when it is full or its
/// first span has waited `delay`, and on Flush or Stop.
fn export_until_stopped<E: SpanExporter>(
    mut exporter: E,
    commands: Receiver<Command>,
    limits: Limits,
    runtime: tokio::runtime::Handle,
    dropped: &'static Dropped,
) {
    let mut batch = Vec::with_capacity(limits.batch);
    let mut due: Option<Instant> = None;
    let export = |batch: &mut Vec<SpanData>, exporter: &E| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let n = spans.len() as u64;
        if let Err(e) = runtime.block_on(exporter.export(spans)) {
            // Once per failing stretch, not once per batch.
            if dropped.export_failed.fetch_add(n, Relaxed) == 0 {
                tracing::warn!(error = %e, spans = n, "exporting spans failed; counting the spans lost");
            }
        }
    };
    loop {
        let command = match due {
            Some(at) => commands.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match command {
            Ok(Command::Export(span)) => {
                batch.push(*span);
                due.get_or_insert_with(|| Instant::now() + limits.delay);
                if batch.len() >= limits.batch {
                    export(&mut batch, &exporter);
                    due = None;
                }
            }
            Ok(Command::Flush(done)) => {
                export(&mut batch, &exporter);
                due = None;
                let _ = done.send(());
            }
            Ok(Command::Stop(done)) => {
                export(&mut batch, &exporter);
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut batch, &exporter);
                due = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch, &exporter);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};

    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// An exporter that says when an export starts and finishes it only
    /// when told to, so that the test holds the export thread busy.
    #[derive(Debug)]
    struct HeldExporter {
        started: Mutex<Sender<usize>>,
        release: Mutex<Receiver<()>>,
    }

    impl SpanExporter for HeldExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.started.lock().unwrap().send(batch.len()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_full_queue_drops_and_counts_spans_and_never_blocks() {
        static DROPPED: Dropped = Dropped::new();
        let (started, exports) = channel();
        let (release, released) = channel();
        let exporter = HeldExporter { started: Mutex::new(started), release: Mutex::new(released) };
        let limits = Limits { queue: 2, batch: 1, delay: Duration::from_secs(60) };
        let processor = QueuedExport::start(exporter, Resource::builder_empty().build(), limits, &DROPPED).unwrap();
        let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
        let tracer = provider.tracer("test");

        // The first span is taken and its export held: the thread is busy.
        tracer.in_span("first", |_| {});
        assert_eq!(exports.recv_timeout(Duration::from_secs(10)), Ok(1));
        // Two fill the queue; the next three find it full.
        for _ in 0..5 {
            tracer.in_span("more", |_| {});
        }
        assert_eq!(DROPPED.by_reason(), [("queue_full", 3), ("export_failed", 0)]);

        // Released, the thread exports the two queued, one batch each.
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        assert_eq!(exports.recv_timeout(Duration::from_secs(10)), Ok(1));
        assert_eq!(exports.recv_timeout(Duration::from_secs(10)), Ok(1));
        tokio::task::spawn_blocking(move || provider.shutdown()).await.unwrap().unwrap();
    }
}
