//! A hostile or broken peer on the host's control socket. Every kind of bad
//! frame gets a typed answer (Refused before the handshake, Violation after
//! it, InferDone Err for a bad request) or a closed connection; meanwhile a
//! real gateway keeps getting right answers, and many rounds of it leave
//! the host's memory and descriptors flat.
//!
//! HOSTILE_ROUNDS sets the number of rounds (scripts/soak runs more).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use integration_tests::raw_control::{Heard, RawControl};
use integration_tests::*;
use protocol::{Ask, GatewayMessage, HostMessage, InferError, InferRequest, MAX_FRAME_LEN, Output, PROTOCOL_VERSION, SlotRef, Welcome};

const WAIT: Duration = Duration::from_secs(5);

fn infer(request_id: u64, slot: SlotRef, ask: Ask) -> GatewayMessage {
    GatewayMessage::Infer(InferRequest { request_id, slot, ask, budget_us: 5_000_000, tag: "hostile-test".into(), payload: protocol::Payload::Input, trace: None })
}

/// What the digits model (a classifier) is asked.
const TOP_3: Ask = Ask::TopK { k: 3 };

/// Bodies that break the framing or bincode (hand-made bytes).
fn broken_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut over_limit = ((MAX_FRAME_LEN as u32) + 1).to_be_bytes().to_vec();
    over_limit.extend_from_slice(&[0u8; 64]);
    vec![
        ("frame over the limit", over_limit),
        // Hello { version 1, name: a string whose varint length says 2^32-1 } in an 8-byte frame.
        ("inner length over the frame", RawControl::frame_of(&[0, 1, 252, 0xff, 0xff, 0xff, 0xff, b'x'])),
        // Cancel { request_id: 7 } and one byte more.
        ("trailing bytes", RawControl::frame_of(&[5, 7, 0])),
        ("unknown message tag", RawControl::frame_of(&[200, 1, 2, 3])),
        ("empty frame", RawControl::frame_of(&[])),
        // A Hello whose name is not UTF-8.
        ("invalid UTF-8 string", RawControl::frame_of(&[0, 1, 2, 0xff, 0xfe])),
    ]
}

async fn expect_violation(c: &mut RawControl, case: &str) {
    match c.next(WAIT).await {
        Heard::Message(HostMessage::Violation { reason }) => assert!(!reason.is_empty(), "{case}: empty reason"),
        other => panic!("{case}: expected Violation, got {other:?}"),
    }
    c.expect_closed(WAIT).await;
}

/// The request is refused as invalid, and the connection goes on serving.
async fn expect_invalid(c: &mut RawControl, request_id: u64, case: &str) {
    match c.next(WAIT).await {
        Heard::Message(HostMessage::InferDone { request_id: id, result: Err(InferError::InvalidRequest(m)) }) => {
            assert_eq!(id, request_id, "{case}: answer for another request");
            assert!(!m.is_empty(), "{case}: empty reason");
        }
        other => panic!("{case}: expected InferDone Err(InvalidRequest), got {other:?}"),
    }
    c.send(&GatewayMessage::Status { request_id: request_id + 1000 }).await;
    match c.next(WAIT).await {
        Heard::Message(HostMessage::Status { .. }) => {}
        other => panic!("{case}: connection not serving after the refusal: {other:?}"),
    }
}

async fn lease(c: &mut RawControl, request_id: u64) -> SlotRef {
    c.send(&GatewayMessage::Lease { request_id }).await;
    match c.next(WAIT).await {
        Heard::Message(HostMessage::Leased { request_id: id, slot }) if id == request_id => slot,
        other => panic!("expected Leased, got {other:?}"),
    }
}

/// One round of every attack, each on its own connection.
async fn one_round(scratch: &Scratch) {
    let socket = scratch.socket();
    before_the_handshake(&socket).await;
    after_the_handshake(&socket).await;
    let (mut c, welcome) = RawControl::handshake(&socket).await;
    bad_references(&mut c, &welcome).await;
    extreme_values(&mut c, &welcome).await;
}

/// Broken frames and wrong first messages: a close, or Refused and a close.
async fn before_the_handshake(socket: &Path) {
    for (case, bytes) in broken_bodies() {
        let mut c = RawControl::connect(socket).await;
        c.send_raw(&bytes).await;
        match c.next(WAIT).await {
            Heard::Closed | Heard::Message(HostMessage::Refused { .. }) => {}
            other => panic!("{case} before the handshake: expected a closed connection, got {other:?}"),
        }
    }
    // A Hello of another protocol version: Refused, then closed.
    let mut c = RawControl::connect(socket).await;
    c.send(&GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION + 1, gateway: "future".into() }).await;
    match c.next(WAIT).await {
        Heard::Message(HostMessage::Refused { reason }) => assert!(reason.contains("version"), "{reason}"),
        other => panic!("wrong version: expected Refused, got {other:?}"),
    }
    c.expect_closed(WAIT).await;
    // Anything but Hello first: Refused, then closed.
    let mut c = RawControl::connect(socket).await;
    c.send(&GatewayMessage::Lease { request_id: 1 }).await;
    assert!(matches!(c.next(WAIT).await, Heard::Message(HostMessage::Refused { .. })), "Lease before Hello");
    c.expect_closed(WAIT).await;
    // Hello, then anything but SegmentMapped: closed (and the segment with it).
    let mut c = RawControl::connect(socket).await;
    c.hello().await;
    c.send(&GatewayMessage::Lease { request_id: 1 }).await;
    c.expect_closed(WAIT).await;
    // A frame cut short by a disconnect.
    let mut c = RawControl::connect(socket).await;
    c.send_raw(&[0, 0, 1, 0, 1, 2, 3]).await;
    drop(c);
}

/// Broken frames and out-of-place messages: a Violation, then a close.
async fn after_the_handshake(socket: &Path) {
    for (case, bytes) in broken_bodies() {
        let (mut c, _) = RawControl::handshake(socket).await;
        c.send_raw(&bytes).await;
        expect_violation(&mut c, case).await;
    }
    let (mut c, _) = RawControl::handshake(socket).await;
    c.send(&GatewayMessage::Hello { protocol_version: PROTOCOL_VERSION, gateway: "again".into() }).await;
    expect_violation(&mut c, "a second Hello").await;
    let (mut c, _) = RawControl::handshake(socket).await;
    c.send(&GatewayMessage::Release { slot: SlotRef { index: 0, generation: 1 } }).await;
    expect_violation(&mut c, "Release of a slot never leased").await;
}

/// Bad slot references and asks: refused one by one, the connection lives.
async fn bad_references(c: &mut RawControl, welcome: &Welcome) {
    let count = welcome.segment.slot_count;
    for (i, index) in [count, count + 5, u32::MAX].into_iter().enumerate() {
        let id = 10 + i as u64;
        c.send(&infer(id, SlotRef { index, generation: 1 }, TOP_3)).await;
        expect_invalid(c, id, "slot index outside the segment").await;
    }
    c.send(&infer(20, SlotRef { index: 0, generation: 12345 }, TOP_3)).await;
    expect_invalid(c, 20, "Infer on a slot never leased").await;
    // An ask of the other model kind: a classifier's slot holds no tensors.
    let slot = lease(c, 30).await;
    c.send(&infer(130, slot, Ask::Tensors)).await;
    expect_invalid(c, 130, "Tensors asked of a classifier").await;
    // Stale generation: lease, give it back, then use the old reference.
    let slot = lease(c, 40).await;
    c.send(&GatewayMessage::Release { slot }).await;
    c.send(&infer(41, slot, TOP_3)).await;
    expect_invalid(c, 41, "stale generation after Release").await;
    // Once sent, the same reference cannot be sent again.
    let slot = lease(c, 50).await;
    c.send(&infer(51, slot, TOP_3)).await;
    c.send(&infer(52, slot, TOP_3)).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        match c.next(WAIT).await {
            Heard::Message(HostMessage::InferDone { request_id, result }) => answers.push((request_id, result.is_ok())),
            other => panic!("double Infer: {other:?}"),
        }
    }
    answers.sort();
    assert_eq!(answers, vec![(51, true), (52, false)], "the first Infer runs, the reuse is refused");
}

/// Valid references with extreme values: answered, and only for this
/// request (a batch shared with other gateways must not fail with it).
async fn extreme_values(c: &mut RawControl, welcome: &Welcome) {
    let classes = welcome.model.classifier().map_or(0, |(_, labels)| labels.len());
    let extremes: [(&str, u32, u64, usize); 4] = [
        ("top_k u32::MAX", u32::MAX, 5_000_000, 0),
        ("top_k 0", 0, 5_000_000, 0),
        ("budget u64::MAX", 3, u64::MAX, 0),
        ("60 KB tag", 3, 5_000_000, 60_000),
    ];
    for (i, (case, top_k, budget_us, tag_len)) in extremes.into_iter().enumerate() {
        let id = 60 + 2 * i as u64;
        let slot = lease(c, id).await;
        let GatewayMessage::Infer(mut request) = infer(id + 1, slot, Ask::TopK { k: top_k }) else { unreachable!() };
        (request.budget_us, request.tag) = (budget_us, "t".repeat(tag_len));
        c.send(&GatewayMessage::Infer(request)).await;
        match c.next(WAIT).await {
            // A tag over the protocol's bound is a typed refusal naming it.
            Heard::Message(HostMessage::InferDone { request_id, result: Err(InferError::InvalidRequest(why)) })
                if request_id == id + 1 && tag_len > protocol::MAX_REQUEST_TAG =>
            {
                assert!(why.contains(&protocol::MAX_REQUEST_TAG.to_string()), "{case}: {why}");
            }
            Heard::Message(HostMessage::InferDone { request_id, result: Ok(p) }) if request_id == id + 1 => {
                assert!(tag_len <= protocol::MAX_REQUEST_TAG, "{case}: answered, not refused");
                let Output::TopK(top) = p.output else { panic!("{case}: a classifier answered {:?}", p.output) };
                assert!((1..=classes).contains(&top.len()), "{case}: {} classes", top.len());
            }
            other => panic!("{case}: expected an answer, got {other:?}"),
        }
    }
    // No time left: refused as expired, not run.
    let slot = lease(c, 70).await;
    let GatewayMessage::Infer(mut request) = infer(71, slot, TOP_3) else { unreachable!() };
    request.budget_us = 0;
    c.send(&GatewayMessage::Infer(request)).await;
    match c.next(WAIT).await {
        Heard::Message(HostMessage::InferDone { request_id: 71, result: Err(InferError::DeadlineExceeded) }) => {}
        other => panic!("budget 0: expected DeadlineExceeded, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_frames_get_typed_errors_and_leave_the_host_flat() {
    let rounds: usize = std::env::var("HOSTILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let warmup = 5.min(rounds / 2);
    let scratch = Scratch::new();
    let host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    let fds0 = fd_count(host.pid());
    let samples = rightly_classified(&gateway, "gray8", 100).await;

    // A real gateway keeps serving right answers throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, served, url) = (stop.clone(), served.clone(), gateway.predict_url());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(Relaxed) {
                let s = &samples[i % samples.len()];
                i += 1;
                let (status, _, body) = post_image(&client, &url, s.bytes.clone(), "image/png").await;
                assert_eq!(status, 200, "the real gateway failed during the attack: {body}");
                assert_eq!(top_label(&body), s.label, "wrong answer during the attack");
                served.fetch_add(1, Relaxed);
            }
        })
    };

    // Peers that connect and then say nothing, or half a frame, are dropped
    // by the handshake timeout; runs alongside the rounds.
    let socket = scratch.socket();
    let silent = tokio::spawn(async move {
        let started = Instant::now();
        let mut quiet = RawControl::connect(&socket).await;
        let mut half = RawControl::connect(&socket).await;
        half.send_raw(&[0, 0]).await;
        let (a, b) = tokio::join!(quiet.next(Duration::from_secs(15)), half.next(Duration::from_secs(15)));
        assert!(matches!(a, Heard::Closed), "silent peer: {a:?}");
        assert!(matches!(b, Heard::Closed), "half-frame peer: {b:?}");
        started.elapsed()
    });

    let started = Instant::now();
    let mut baseline = None;
    for round in 0..rounds {
        if round == warmup {
            tokio::time::sleep(Duration::from_millis(100)).await;
            baseline = Some(proc_status(host.pid(), "VmRSS"));
        }
        one_round(&scratch).await;
    }
    let attack_time = started.elapsed();
    let silent_closed_after = silent.await.expect("silent peers");
    let settled = eventually(Duration::from_secs(3), async || {
        let s = gateway.host_status().await;
        s["connections"] == 1 && s["leased_slots"] == 0
    })
    .await;
    stop.store(true, Relaxed);
    traffic.await.expect("the real gateway's traffic");

    let rss0 = baseline.expect("a baseline after warm-up");
    let (fds1, rss1) = (fd_count(host.pid()), proc_status(host.pid(), "VmRSS"));
    let status = gateway.host_status().await;
    let connections = rounds * (broken_bodies().len() * 2 + 7);
    println!(
        "{rounds} rounds, {connections} hostile connections in {attack_time:.1?}; real predictions meanwhile: {}; \
         silent peers closed after {silent_closed_after:.1?}; host fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB ({:+} KiB)",
        served.load(Relaxed),
        rss1 as i64 - rss0 as i64
    );
    assert!(settled.is_some(), "hostile connections not cleaned up: {status}");
    assert!(served.load(Relaxed) > 0, "no real prediction was served during the attack");
    assert_eq!(status["pid"], host.pid(), "the host restarted");
    assert_eq!(status["model_loads"], 1);
    assert_eq!(fds1, fds0, "descriptors leaked");
    assert!(rss1 < rss0 + 4 * 1024, "resident memory grew by {} KiB", rss1 as i64 - rss0 as i64);
    assert!(silent_closed_after < Duration::from_secs(10), "silent peers held for {silent_closed_after:?}");
    assert_eq!(segments_of(&[host.pid()]), Vec::<String>::new(), "segments left in /dev/shm");
}
