//! A real OTLP trace receiver for the tests: OTLP/HTTP (protobuf POSTed to
//! `/v1/traces`) and OTLP/gRPC (`TraceService/Export`), decoding
//! `ExportTraceServiceRequest` with the opentelemetry-proto messages, as a
//! collector would, and keeping every span it is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as received, ids in lower-case hex as W3C writes them.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`: which process sent it.
    pub service: String,
    /// `http` or `grpc`: how it came.
    pub transport: &'static str,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's SpanKind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub attributes: HashMap<String, serde_json::Value>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&serde_json::Value> {
        self.attributes.get(key)
    }
}

/// The receiver's two listeners and what it has received.
pub struct OtlpReceiver {
    /// Base URL of the OTLP/HTTP listener (spans go to its /v1/traces).
    pub http_endpoint: String,
    /// URL of the OTLP/gRPC listener.
    pub grpc_endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl OtlpReceiver {
    /// Listens on two free ports of 127.0.0.1.
    pub async fn start() -> OtlpReceiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the OTLP/HTTP port");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the OTLP/gRPC port");
        let http_endpoint = format!("http://{}", http.local_addr().unwrap());
        let grpc_endpoint = format!("http://{}", grpc.local_addr().unwrap());
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: bytes::Bytes| {
                let store = store.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP/HTTP body that is an ExportTraceServiceRequest");
                    keep(&store, request, "http");
                    ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });
        let service = TraceServiceServer::new(GrpcReceiver { spans: spans.clone() });
        let grpc_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        OtlpReceiver { http_endpoint, grpc_endpoint, spans, tasks: vec![http_task, grpc_task] }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }
}

struct GrpcReceiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.spans, request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn keep(store: &Mutex<Vec<ReceivedSpan>>, request: ExportTraceServiceRequest, transport: &'static str) {
    let mut spans = store.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    transport,
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    status: span.status.map_or(0, |s| s.code),
                });
            }
        }
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, serde_json::Value> {
    list.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(serde_json::Value::Null, value))).collect()
}

fn value(v: &AnyValue) -> serde_json::Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone().into(),
        Some(any_value::Value::IntValue(i)) => (*i).into(),
        Some(any_value::Value::BoolValue(b)) => (*b).into(),
        Some(any_value::Value::DoubleValue(d)) => (*d).into(),
        other => format!("{other:?}").into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
