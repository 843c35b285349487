//! OpenTelemetry traces, received by a real OTLP receiver
//! (support/otlp.rs): the gateway exports over OTLP/HTTP, the host over
//! OTLP/gRPC. One request's trace, started by the client's `traceparent`,
//! holds the gateway's spans and the host's with the right parents across
//! the two processes, and its batch with the batch's size; the same over
//! gRPC metadata. With no endpoint nothing is exported.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use gateway_grpc_proto::ModelInferRequest;
use gateway_grpc_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gateway_grpc_proto::model_infer_request::InferInputTensor;
use integration_tests::otlp::{OtlpReceiver, ReceivedSpan};
use integration_tests::*;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The client's own trace and span, as it would send them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const GRPC_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const GRPC_CLIENT_SPAN: &str = "b7ad6b7169203331";

/// The spans of a trace by name (each name once in these traces); the
/// gateway's server span, named for its route, as `server`.
fn by_name(spans: &[ReceivedSpan]) -> HashMap<&str, &ReceivedSpan> {
    spans.iter().map(|s| (if is_gateway_server(s) { "server" } else { s.name.as_str() }, s)).collect()
}

fn is_gateway_server(span: &ReceivedSpan) -> bool {
    span.service == "splitserve-gateway" && span.kind == SERVER
}

/// Whether `span` descends from `ancestor` within `spans`.
fn descends(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        if parent == ancestor.span_id {
            return true;
        }
        parent = spans.iter().find(|s| s.span_id == parent).map(|s| s.parent_span_id.clone()).unwrap_or_default();
    }
    false
}

/// Waits until the trace holds every span `names` lists (as [`by_name`]
/// names them).
async fn wait_for_trace(receiver: &OtlpReceiver, trace_id: &str, names: &[&str]) -> Vec<ReceivedSpan> {
    let complete = eventually(Duration::from_secs(30), async || {
        let spans = receiver.trace(trace_id);
        names.iter().all(|n| by_name(&spans).contains_key(n))
    })
    .await;
    let spans = receiver.trace(trace_id);
    assert!(complete.is_some(), "trace {trace_id} lacks some of {names:?}; it has {:#?}", spans);
    spans
}

#[tokio::test]
async fn one_request_is_one_trace_from_the_client_through_the_batch() {
    let receiver = OtlpReceiver::start().await;
    let scratch = Scratch::new();
    // Spans leave within 50 ms of ending, rather than the default 5 s.
    let fast = ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string());
    let _host = scratch.start_host_with_env(
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint.clone()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()), fast.clone()],
    );
    let grpc_port = free_port().to_string();
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let gateway = scratch.start_gateway_with_env(&["--otlp-endpoint", &receiver.http_endpoint, "--grpc-listen", &grpc_addr], &[fast]);
    gateway.wait_ready().await;

    let client = reqwest::Client::new();
    let sample = testset("gray8").remove(0);
    let response = client
        .post(gateway.predict_url())
        .header("content-type", "image/png")
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .body(sample.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let names = ["server", "read_body", "decode", "lease", "wait_for_host", "answer", "model-host/Infer", "queue", "batch", "upload", "forward", "read_back"];
    let spans = wait_for_trace(&receiver, TRACE_ID, &names).await;
    let span = by_name(&spans);

    // The gateway's server span continues the client's trace.
    let http = span["server"];
    assert_eq!(http.parent_span_id, CLIENT_SPAN, "the client's traceparent is the root");
    assert_eq!(http.name, "POST /v1/models/{name}/predict");
    assert_eq!(http.transport, "http");
    assert_eq!(http.attribute("http.request.method"), Some(&"POST".into()));
    assert_eq!(http.attribute("http.route"), Some(&"/v1/models/{name}/predict".into()));
    assert_eq!(http.attribute("http.response.status_code"), Some(&200.into()));
    for child in ["read_body", "decode", "lease", "wait_for_host", "answer"] {
        assert_eq!(span[child].service, "splitserve-gateway");
        assert!(descends(&spans, span[child], http), "{child} is not under the gateway's request span");
    }
    let waiting = span["wait_for_host"];
    assert_eq!(waiting.kind, CLIENT);

    // The host's spans, sent by the other process over the other
    // transport, hang under the gateway's wait for the host.
    let infer = span["model-host/Infer"];
    assert_eq!((infer.service.as_str(), infer.transport, infer.kind), ("splitserve-model-host", "grpc", SERVER));
    assert_eq!(infer.parent_span_id, waiting.span_id, "the host's request span is a child of wait_for_host");
    assert_eq!(span["queue"].parent_span_id, infer.span_id);
    let batch = span["batch"];
    assert_eq!(batch.parent_span_id, infer.span_id);
    assert_eq!(batch.attribute("splitserve.batch.size"), Some(&1.into()));
    assert_eq!(infer.attribute("splitserve.batch.size"), Some(&1.into()));
    assert!(batch.links.contains(&(TRACE_ID.to_string(), infer.span_id.clone())), "the batch links to the request it served");
    assert!(infer.links.contains(&(TRACE_ID.to_string(), batch.span_id.clone())), "the request links to its batch");
    for step in ["upload", "forward", "read_back"] {
        assert_eq!(span[step].parent_span_id, batch.span_id, "{step} is a step of the batch");
    }

    // gRPC: the client's traceparent in the call's metadata.
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{grpc_addr}")).await.expect("connecting");
    let mut call = tonic::Request::new(ModelInferRequest {
        model_name: "digits".into(),
        inputs: vec![InferInputTensor { name: "PIXELS".into(), datatype: "UINT8".into(), shape: vec![1, 32, 32, 1], ..Default::default() }],
        raw_input_contents: vec![Bytes::from(vec![0u8; 1024])],
        ..Default::default()
    });
    call.metadata_mut().insert("traceparent", format!("00-{GRPC_TRACE_ID}-{GRPC_CLIENT_SPAN}-01").parse().unwrap());
    grpc.model_infer(call).await.expect("a gRPC inference");
    let spans = wait_for_trace(&receiver, GRPC_TRACE_ID, &["server", "decode", "wait_for_host", "answer", "model-host/Infer", "batch"]).await;
    let span = by_name(&spans);
    let call = span["server"];
    assert_eq!(call.parent_span_id, GRPC_CLIENT_SPAN);
    assert_eq!(call.name, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(call.attribute("rpc.system"), Some(&"grpc".into()));
    assert_eq!(call.attribute("rpc.method"), Some(&"ModelInfer".into()));
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some(&0.into()));
    for child in ["decode", "wait_for_host", "answer"] {
        assert!(descends(&spans, span[child], call), "{child} is not inside the gRPC call's span");
    }
    assert_eq!(span["model-host/Infer"].parent_span_id, span["wait_for_host"].span_id);

    // A request without a traceparent starts a trace of its own.
    let (status, _, _) = post_image(&client, &gateway.predict_url(), sample.bytes.clone(), "image/png").await;
    assert_eq!(status, 200);
    let own = eventually(Duration::from_secs(30), async || {
        receiver.spans().iter().any(|s| is_gateway_server(s) && s.name.starts_with("POST") && s.parent_span_id.is_empty())
    })
    .await;
    assert!(own.is_some(), "no root span for a request without traceparent");

    // Nothing was dropped on the way.
    let metrics = client.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("splitserve_gateway_spans_dropped_total{reason=\"queue_full\"} 0"), "{metrics}");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let client = reqwest::Client::new();
    let sample = testset("gray8").remove(0);
    let response = client
        .post(gateway.predict_url())
        .header("content-type", "image/png")
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .body(sample.bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a traceparent changes nothing with traces off");
    let metrics = client.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("splitserve_gateway_spans_dropped_total"), "no span metric with traces off");
    assert!(!gateway.process.log().contains("exporting traces"));
}
