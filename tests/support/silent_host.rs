//! A stand-in host that completes the handshake, says it is ready, answers
//! Status (so /metrics scrapes work), and never answers a Lease: every
//! inference a gateway sends it stays in flight until its HTTP client gives
//! up. For tests of what a gateway does with requests cut off mid-flight.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use protocol::codec::{decode_body, encode_body};
use protocol::shm::{Segment, SlotLayout};
use protocol::{
    GatewayMessage, HostMessage, HostStatus, ModelInfo, PROTOCOL_VERSION, Phase, SegmentInfo, StartupTimings, Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The digits model's shape: what a gateway's v1 predict route expects.
fn model() -> ModelInfo {
    ModelInfo {
        name: "digits".into(),
        version: "1".into(),
        description: "silent stand-in".into(),
        kind: protocol::ModelKind::Classifier {
            input: protocol::ImageShape { width: 32, height: 32, channels: 1 },
            labels: (0..10).map(|d| d.to_string()).collect(),
        },
        max_batch_size: 1,
        device: "cpu".into(),
        host_decode: None,
    }
}

/// Listens on `socket` and serves every gateway that connects, silently.
/// Runs until the test's runtime ends.
/// Segment names' sequence, for every stand-in host in this process.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Returns the count of Lease requests it has received (and left
/// unanswered), across its connections.
pub fn start(socket: &Path) -> Arc<AtomicUsize> {
    start_speaking(socket, PROTOCOL_VERSION)
}

/// The same, saying in its Welcome that it speaks `protocol_version`: a
/// host of another release.
pub fn start_speaking(socket: &Path, protocol_version: u32) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(socket).expect("binding the silent host's socket");
    let leases = Arc::new(AtomicUsize::new(0));
    let counted = leases.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Numbered across every stand-in host of this test process: two
            // of them (replicas) set up their first connections at the same
            // time, and a per-listener count named both segments alike.
            let connection_id = NEXT_CONNECTION.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, connection_id, protocol_version, counted.clone()));
        }
    });
    leases
}

async fn read(stream: &mut UnixStream) -> Option<GatewayMessage> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.ok()?;
    decode_body(&body).ok()
}

async fn serve(mut stream: UnixStream, connection_id: u64, protocol_version: u32, leases: Arc<AtomicUsize>) {
    let Some(GatewayMessage::Hello { .. }) = read(&mut stream).await else { return };
    let layout = SlotLayout::new(4, model().slot_len()).expect("slot layout");
    let name = format!("/silent-host.{}.{connection_id}", std::process::id());
    let mut segment = Segment::create(&name, layout, 0o600).expect("creating the segment");
    let welcome = Welcome {
        protocol_version,
        host_pid: std::process::id(),
        model: model(),
        segment: SegmentInfo { os_id: name, slot_count: layout.slot_count(), slot_size: layout.slot_size() },
        phase: Phase::Ready(StartupTimings::default()),
    };
    if write(&mut stream, &HostMessage::Welcome(welcome)).await.is_err() {
        return;
    }
    if let Some(GatewayMessage::SegmentMapped) = read(&mut stream).await {
        let _ = segment.unlink();
    }
    // Hear everything; answer only Status.
    while let Some(message) = read(&mut stream).await {
        if let GatewayMessage::Lease { .. } = message {
            leases.fetch_add(1, Ordering::SeqCst);
        }
        if let GatewayMessage::Status { request_id } = message
            && write(&mut stream, &HostMessage::Status { request_id, status: status() }).await.is_err()
        {
            return;
        }
    }
}

async fn write(stream: &mut UnixStream, message: &HostMessage) -> std::io::Result<()> {
    let body = encode_body(message).expect("encoding a host message");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

fn status() -> HostStatus {
    HostStatus {
        jobs: None,
        pid: std::process::id(),
        phase: Phase::Ready(StartupTimings::default()),
        model_loads: 1,
        connections: 1,
        leased_slots: 0,
        requests_done: 0,
        batches_done: 0,
        device: "cpu".into(),
        queue_depth: 0,
        batches_by_size: vec![],
        copy_seconds_total: 0.0,
        inference_seconds_total: 0.0,
        refused: vec![],
        jpegs_decoded: 0,
        graph_batch_sizes: vec![],
        memory: Default::default(),
        spans_dropped: vec![],
    }
}
