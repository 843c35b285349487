//! The gateway's gRPC port against a real host, with a generated tonic
//! client and a raw HTTP/2 client for what no well-behaved client sends:
//! a message over --grpc-max-message-bytes, a wrong datatype, a shape
//! against its data, a malformed protobuf, a call that never sends its
//! message, a zero grpc-timeout, an RPC not offered; each answered with a
//! status naming the problem. Then 1,000 hostile connections, after which
//! the gateway's RSS and open descriptors are where they were; a call the
//! client drops is skipped at the host; held sockets told apart by name.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use gateway_grpc_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gateway_grpc_proto::model_infer_request::InferInputTensor;
use gateway_grpc_proto::{ModelInferRequest, RepositoryModelLoadRequest};
use integration_tests::{Gateway, Scratch, free_port};
use prost::Message;
use tonic::Code;

const MAX_MESSAGE: usize = 4096;
const BODY_TIMEOUT_MS: u64 = 300;
const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

struct Setup {
    _scratch: Scratch,
    _host: integration_tests::Process,
    gateway: Gateway,
    grpc: u16,
}

async fn setup() -> Setup {
    let scratch = Scratch::new();
    let host = scratch.start_host(&[]);
    let grpc = free_port();
    let (addr, max, timeout) = (format!("127.0.0.1:{grpc}"), MAX_MESSAGE.to_string(), BODY_TIMEOUT_MS.to_string());
    let gateway = scratch.start_gateway(&["--grpc-listen", &addr, "--grpc-max-message-bytes", &max, "--body-timeout-ms", &timeout]);
    gateway.wait_for("/v2/models/digits/ready", Duration::from_secs(60)).await;
    Setup { _scratch: scratch, _host: host, gateway, grpc }
}

/// One PIXELS input of `datatype` and `shape`, with `raw` as its data.
fn pixels(datatype: &str, shape: &[i64], raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "digits".into(),
        inputs: vec![InferInputTensor { name: "PIXELS".into(), datatype: datatype.into(), shape: shape.to_vec(), ..Default::default() }],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    }
}

/// gRPC's length-prefixed message framing.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

async fn h2_client(port: u16) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connecting");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    client
}

fn call(path: &str, timeout: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        request = request.header("grpc-timeout", t);
    }
    request.body(()).expect("a request")
}

/// Sends `body` (None: nothing, ever) and reads the call's grpc-status
/// and message, from the headers (trailers-only answers) or the trailers.
async fn raw_call(client: &mut h2::client::SendRequest<Bytes>, request: http::Request<()>, body: Option<Bytes>) -> (i32, String) {
    let (response, mut stream) = client.clone().ready().await.expect("ready").send_request(request, false).expect("sending");
    if let Some(body) = body {
        stream.send_data(body, true).expect("sending data");
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.expect("an answer in time").expect("a response");
    let status = |h: &http::HeaderMap| {
        let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = h.get("grpc-message").map(|m| percent_decode(m.as_bytes())).unwrap_or_default();
        Some((code, message))
    };
    if let Some(found) = status(response.headers()) {
        drop(stream);
        return found;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk;
    }
    let trailers = body.trailers().await.expect("trailers").expect("trailers present");
    drop(stream);
    status(&trailers).expect("grpc-status in the trailers")
}

fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 3 <= raw.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hostile_calls_get_a_status_naming_the_problem_and_leave_nothing_behind() {
    let s = setup().await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{}", s.grpc)).await.expect("connecting");

    let over = client.model_infer(pixels("UINT8", &[5, 32, 32, 1], vec![0; 5 * 1024])).await.expect_err("over the limit");
    println!("over the limit: {over:?}");
    assert_eq!(over.code(), Code::ResourceExhausted);
    assert!(over.message().contains(&MAX_MESSAGE.to_string()), "{}", over.message());

    let wrong = client.model_infer(pixels("FP32", &[1, 2, 2, 1], vec![0; 16])).await.expect_err("wrong datatype");
    assert_eq!((wrong.code(), wrong.message()), (Code::InvalidArgument, "invalid inputs: PIXELS.datatype is FP32; expected UINT8"));

    let short = client.model_infer(pixels("UINT8", &[2, 32, 32, 1], vec![0; 1024])).await.expect_err("shape against data");
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("PIXELS.data has 1024 elements; shape [2, 32, 32, 1] needs 2048"), "{}", short.message());

    let missing = client.model_infer(ModelInferRequest { model_name: "nope".into(), ..Default::default() }).await.expect_err("unknown model");
    assert_eq!(missing.code(), Code::NotFound);

    let load = client.repository_model_load(RepositoryModelLoadRequest {}).await.expect_err("not offered");
    assert_eq!(load.code(), Code::Unimplemented);
    assert!(load.message().contains("systemd or Kubernetes"), "{}", load.message());

    let ok = client.model_infer(pixels("UINT8", &[1, 32, 32, 1], vec![0; 1024])).await.expect("a good request").into_inner();
    assert_eq!((ok.outputs.len(), ok.raw_output_contents[0].len()), (1, 40));

    let mut raw = h2_client(s.grpc).await;
    let (code, message) = raw_call(&mut raw, call(PATH, None), Some(frame(b"\xff\xff\xff\xff not protobuf"))).await;
    println!("malformed: {code} {message}");
    assert!(code == Code::InvalidArgument as i32 && message.contains("failed to decode Protobuf message"), "{code} {message}");

    let (code, message) = raw_call(&mut raw, call(PATH, None), None).await;
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains(&format!("within {BODY_TIMEOUT_MS} ms")), "{message}");

    let request = pixels("UINT8", &[1, 32, 32, 1], vec![0; 1024]).encode_to_vec();
    let (code, message) = raw_call(&mut raw, call(PATH, Some("0m")), Some(frame(&request))).await;
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("0 ms deadline"), "{message}");

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", s.grpc)).expect("a uri").connect().await.expect("connecting");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.expect("health").into_inner();
        assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }
    drop((client, health, raw));

    let metrics = reqwest::get(s.gateway.url("/metrics")).await.expect("metrics").text().await.unwrap();
    for line in [r#"splitserve_gateway_grpc_requests_total{method="ModelInfer",code="3"}"#, r#"splitserve_gateway_grpc_requests_total{method="ModelInfer",code="0"}"#] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }

    thousand_hostile_connections(&s).await;
}

/// RSS (kB) and open descriptors of `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("reading fds").count();
    (rss, fds)
}

/// One hostile connection: a call that never sends, or a malformed one,
/// answered, then the connection dropped.
async fn hostile(port: u16, i: usize) {
    let mut client = h2_client(port).await;
    let body = (i % 2 == 1).then(|| frame(b"\x0a\xff\xff\xff\xff\x0f garbage"));
    let (code, _) = raw_call(&mut client, call(PATH, None), body).await;
    assert!(code == Code::InvalidArgument as i32 || code == Code::DeadlineExceeded as i32, "{code}");
}

async fn thousand_hostile_connections(s: &Setup) {
    let pid = s.gateway.process.pid();
    // A first round, so that buffers and pools are at their working size.
    futures::future::join_all((0..100).map(|i| hostile(s.grpc, i))).await;
    let before = settled_footprint(pid, None).await;
    for round in 0..10 {
        futures::future::join_all((0..100).map(|i| hostile(s.grpc, round * 100 + i))).await;
    }
    let after = settled_footprint(pid, Some(before.1)).await;
    println!("gateway after 1,000 hostile gRPC connections: RSS {} -> {} kB, fds {} -> {}", before.0, after.0, before.1, after.1);
    assert!(after.1 <= before.1 + 2, "descriptors grew: {} -> {}", before.1, after.1);
    assert!(after.0 < before.0 + 16 * 1024, "RSS grew by more than 16 MiB: {} -> {} kB", before.0, after.0);
}

/// The footprint once the gateway has closed its side of the connections
/// (it learns of each close asynchronously): polled until the descriptor
/// count is back to `fds`, for at most 10 s.
async fn settled_footprint(pid: u32, fds: Option<usize>) -> (u64, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = footprint(pid);
        let settled = match fds {
            None => true,
            Some(fds) => now.1 <= fds,
        };
        if settled || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the child at the end of the test, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn held_sockets_are_told_apart_by_their_names() {
    // As systemd passes gateway.socket and gateway-grpc.socket: two
    // sockets in LISTEN_FDS, named http and grpc in LISTEN_FDNAMES.
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let (http, grpc) = (free_port(), free_port());
    let child = std::process::Command::new("systemd-socket-activate")
        .args(["--listen", &format!("127.0.0.1:{http}"), "--listen", &format!("127.0.0.1:{grpc}"), "--fdname=http:grpc"])
        .arg(integration_tests::binary("gateway"))
        .arg("--host-socket")
        .arg(scratch.socket())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) must be installed");
    let _child = Killed(child);
    // The held sockets accept at once; the first connection starts the gateway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let live = loop {
        let client = GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await;
        if let Ok(mut client) = client
            && let Ok(live) = client.server_live(gateway_grpc_proto::ServerLiveRequest {}).await
        {
            break live.into_inner().live;
        }
        assert!(tokio::time::Instant::now() < deadline, "no gRPC answer on the held socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(live);
    let body = reqwest::get(format!("http://127.0.0.1:{http}/v2/health/live")).await.expect("HTTP on the other socket").text().await.unwrap();
    assert!(body.contains("\"live\":true"), "{body}");
}

#[tokio::test]
async fn a_call_the_client_drops_is_skipped_at_the_host() {
    // The host holds a lone request for 10 s waiting for a fuller batch;
    // the client gives up after 2 s (long enough for the request to reach
    // the host on a loaded machine; its stream is reset), and the gateway
    // cancels the host call, which the host then skips rather than runs.
    let scratch = Scratch::new();
    let toml = integration_tests::model_toml_copy(&integration_tests::digits_model(), scratch.dir.path(), "held.toml", |text| {
        integration_tests::with_batching(text, "max_batch_size = 8\nmax_queue_delay_us = 10000000")
    });
    let _host = scratch.start_host(&["--model", &toml]);
    let grpc = free_port();
    let gateway = scratch.start_gateway(&["--grpc-listen", &format!("127.0.0.1:{grpc}")]);
    gateway.wait_for("/v2/models/digits/ready", Duration::from_secs(60)).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await.expect("connecting");
    let call = client.model_infer(pixels("UINT8", &[1, 32, 32, 1], vec![0; 1024]));
    assert!(tokio::time::timeout(Duration::from_secs(2), call).await.is_err(), "answered before the batch delay");
    let cancelled = |metrics: &str| {
        metrics.lines().any(|l| l.starts_with("splitserve_host_refused_total{") && l.contains("reason=\"cancelled\"") && l.ends_with(" 1"))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let metrics = reqwest::get(gateway.url("/metrics")).await.expect("metrics").text().await.unwrap();
        if cancelled(&metrics) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the host never skipped the dropped call:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
