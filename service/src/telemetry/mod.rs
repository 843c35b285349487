//! OpenTelemetry traces, exported over OTLP; off unless an endpoint is
//! configured.
//!
//! - [`TraceFlags`]: the flags, read from the standard `OTEL_*` variables.
//! - [`init`]: installs the log layer and, when traces are on, the
//!   OpenTelemetry layer beside it. With traces off that layer is not
//!   installed at all, so the request path pays nothing for it.
//! - [`queue`]: the bounded queue between finished spans and the exporter;
//!   a full queue drops spans (counted) rather than slow a request.
//! - [`context`]: W3C trace contexts in and out: a client's `traceparent`,
//!   and the [`protocol::TraceParent`] the Infer message carries.

pub mod context;
pub mod queue;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use clap::{Args, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::LogFormat;
pub use queue::Dropped;

/// Spans this process never exported (all zero with traces off).
pub static DROPPED: Dropped = Dropped::new();

/// Whether spans are exported: read on the request path to skip making
/// spans nobody would see.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once [`init`] has installed an exporter.
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// The span `make` builds when traces are exported; a disabled span
/// (nothing allocated, nothing recorded) otherwise.
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if enabled() { make() } else { tracing::Span::none() }
}

/// OTLP transports, by the names OTEL_EXPORTER_OTLP_PROTOCOL uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP, POST `<endpoint>/v1/traces` (port 4318 by convention).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (port 4317 by convention).
    #[value(name = "grpc")]
    Grpc,
}

/// Where and how to export traces. The standard OpenTelemetry variables
/// set them, the same for both daemons; flags override.
#[derive(Debug, Clone, Args)]
pub struct TraceFlags {
    /// Export OpenTelemetry traces to this OTLP endpoint: a collector,
    /// Jaeger or Tempo, e.g. http://localhost:4318 (http/protobuf; spans go
    /// to its /v1/traces) or http://localhost:4317 (grpc). Unset: no traces.
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, when set, is used as it is instead.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// The OTLP transport.
    #[arg(long = "otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value = "http/protobuf")]
    pub protocol: OtlpProtocol,
    /// Finished spans waiting to be exported at most; past this, new ones
    /// are dropped (and counted) rather than hold up a request.
    #[arg(long = "otlp-queue-spans", env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_spans: u32,
    /// Spans sent in one export at most.
    #[arg(long = "otlp-batch-spans", env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_spans: u32,
    /// Milliseconds a finished span may wait for a fuller batch.
    #[arg(long = "otlp-delay-ms", env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 5000)]
    pub delay_ms: u64,
}

impl TraceFlags {
    /// The endpoint to export to, unless traces are off: no endpoint, or
    /// the standard switches OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
    fn endpoint(&self) -> Option<Endpoint> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Some(Endpoint { url, whole: true });
        }
        let base = self.endpoint.as_ref().filter(|e| !e.trim().is_empty())?;
        Some(Endpoint { url: base.trim().to_string(), whole: false })
    }
}

/// An OTLP endpoint: a base URL, or (`whole`) a traces URL used as it is.
struct Endpoint {
    url: String,
    whole: bool,
}

impl Endpoint {
    /// The URL spans go to: over HTTP, a base URL gets the signal's path.
    fn for_protocol(&self, protocol: OtlpProtocol) -> String {
        match protocol {
            OtlpProtocol::HttpProtobuf if !self.whole => format!("{}/v1/traces", self.url.trim_end_matches('/')),
            _ => self.url.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("the span export thread: {0}")]
    Thread(std::io::Error),
}

/// What [`init`] installed; [`Telemetry::shutdown`] exports what is left.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (for at most a few seconds), off the
    /// async workers: the export itself runs on this runtime.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        })
        .await;
    }
}

/// Installs the global subscriber: logs as `log` says (filtered by
/// `RUST_LOG`, default info), and, when `flags` name an endpoint, spans
/// at INFO and above exported over OTLP as `service` (unless
/// OTEL_SERVICE_NAME names it). Must run inside the tokio runtime that
/// will carry the exports.
pub fn init(log: LogFormat, flags: &TraceFlags, service: &'static str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = log.layer().with_filter(filter);
    let Some(endpoint) = flags.endpoint() else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let url = endpoint.for_protocol(flags.protocol);
    let provider = provider(flags, &url, service)?;
    let tracer = provider.tracer(service);
    // Spans only at INFO and above, whatever RUST_LOG says of logs; no
    // busy/idle timings or source locations on every span.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_filter(LevelFilter::INFO);
    tracing_subscriber::registry().with(logs).with(spans).init();
    ENABLED.store(true, Relaxed);
    tracing::info!(endpoint = %url, protocol = ?flags.protocol, queue_spans = flags.queue_spans, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

/// The tracer provider: an OTLP exporter behind the bounded queue, the
/// sampler from OTEL_TRACES_SAMPLER (the SDK reads it; default: follow the
/// parent, sample roots), the resource from OTEL_RESOURCE_ATTRIBUTES.
fn provider(flags: &TraceFlags, url: &str, service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    let failed = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter { endpoint: url.to_string(), reason: e.to_string() };
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match flags.protocol {
        OtlpProtocol::Grpc => builder.with_tonic().with_endpoint(url).build().map_err(failed)?,
        OtlpProtocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(failed)?,
    };
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new("process.pid", i64::from(std::process::id())));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let limits = queue::Limits {
        queue: flags.queue_spans as usize,
        batch: flags.batch_spans as usize,
        delay: Duration::from_millis(flags.delay_ms.max(1)),
    };
    let processor = queue::QueuedExport::start(exporter, resource.build(), limits, &DROPPED).map_err(TelemetryError::Thread)?;
    Ok(SdkTracerProvider::builder().with_span_processor(processor).build())
}
