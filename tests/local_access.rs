//! Other local users: the control socket and every shared-memory segment
//! are never world-accessible (0660 and 0600 by default, whatever the
//! umask), a world-accessible mode is refused at startup, and a process of
//! another user gets in only as far as the modes and --allowed-uids/-gids
//! let it.
//!
//! The host unlinks a segment's name as soon as its gateway has mapped it,
//! so the tests stop a raw client after Hello (before SegmentMapped) and
//! stat /dev/shm/<the name in the Welcome>.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::raw_control::{Heard, RawControl};
use integration_tests::*;

/// Modes must hold whatever umask the host starts under: start it under none.
fn no_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn shm_path(os_id: &str) -> PathBuf {
    Path::new("/dev/shm").join(os_id.trim_start_matches('/'))
}

/// Connects once the host has bound its socket.
async fn connect_when_up(socket: &Path) -> RawControl {
    let started = Instant::now();
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the host never bound {}", socket.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    RawControl::connect(socket).await
}

/// The mode of a fresh segment, seen between Welcome and SegmentMapped; and
/// checks that it is gone once the client that made the host create it is.
async fn segment_mode(socket: &Path, complete_handshake: bool) -> (u32, u32) {
    let mut c = connect_when_up(socket).await;
    let welcome = c.hello().await;
    let path = shm_path(&welcome.segment.os_id);
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mode, uid) = (meta.permissions().mode() & 0o777, meta.uid());
    if complete_handshake {
        c.segment_mapped().await;
        let unlinked = eventually(Duration::from_secs(2), async || !path.exists()).await;
        assert!(unlinked.is_some(), "{} still named after SegmentMapped", path.display());
    }
    drop(c);
    let gone = eventually(Duration::from_secs(2), async || !path.exists()).await;
    assert!(gone.is_some(), "{} left behind by a client that left after Hello", path.display());
    (mode, uid)
}

#[tokio::test]
async fn segments_and_socket_are_never_world_accessible() {
    no_umask();
    let own_uid = nix::unistd::Uid::effective().as_raw();

    let scratch = Scratch::new();
    let host = scratch.start_host(&[]);
    let (shm, owner) = segment_mode(&scratch.socket(), false).await;
    let socket = mode_of(&scratch.socket());
    let (shm_again, _) = segment_mode(&scratch.socket(), true).await;
    println!("defaults under umask 000: segment {shm:o} (owner uid {owner}), control socket {socket:o}");
    assert_eq!(shm, 0o600, "segment mode by default");
    assert_eq!(shm_again, 0o600);
    assert_eq!(owner, own_uid, "the segment belongs to the host's user");
    assert_eq!(socket, 0o660, "control socket mode by default");
    drop(host);

    let scratch = Scratch::new();
    let _host = scratch.start_host(&["--shm-mode", "660", "--socket-mode", "600"]);
    let (shm, _) = segment_mode(&scratch.socket(), false).await;
    let socket = mode_of(&scratch.socket());
    println!("--shm-mode 660 --socket-mode 600: segment {shm:o}, control socket {socket:o}");
    assert_eq!(shm, 0o660);
    assert_eq!(socket, 0o600);
}

#[tokio::test]
async fn world_accessible_modes_are_refused_at_startup() {
    for flags in [["--shm-mode", "666"], ["--shm-mode", "604"], ["--socket-mode", "666"], ["--socket-mode", "662"]] {
        let scratch = Scratch::new();
        let mut host = scratch.start_host(&flags);
        let code = host.wait_exit(Duration::from_secs(10));
        assert!(matches!(code, Some(c) if c != 0), "{flags:?}: the host did not refuse to start ({code:?})");
        assert!(host.log().contains("local user"), "{flags:?}: log does not say why:\n{}", host.log());
        assert!(!scratch.socket().exists(), "{flags:?}: a socket was bound");
    }
}

/// This test binary, copied where any user may run it (the checkout may
/// sit under a directory that only its owner can enter).
fn probe_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("split-probe-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("probe");
    std::fs::copy(std::env::current_exe().expect("current_exe"), &exe).expect("copying the test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, exe)
}

/// What a process of another user (uid 65534) got from the control socket,
/// as printed by `peer_probe_helper` below.
fn probe_as(probe: &Path, socket: &Path, gid: u32) -> String {
    use std::os::unix::process::CommandExt;
    let output = std::process::Command::new(probe)
        .args(["--exact", "peer_probe_helper", "--nocapture", "--test-threads=1"])
        .env("PEER_PROBE_SOCKET", socket)
        .uid(65534)
        .gid(gid)
        .output()
        .expect("running the probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("PROBE: ").map(|(_, said)| said))
        .unwrap_or_else(|| panic!("the probe said nothing: {stdout} {}", String::from_utf8_lossy(&output.stderr)))
        .to_string()
}

/// Not a test on its own: `probe_as` runs this test binary as another user
/// with PEER_PROBE_SOCKET set. Connects, says Hello, and prints what
/// happened, including whether the segment in a Welcome can be opened.
#[test]
fn peer_probe_helper() {
    use std::io::{Read, Write};
    let Some(socket) = std::env::var_os("PEER_PROBE_SOCKET") else { return };
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => return println!("PROBE: connect refused ({})", e.kind()),
    };
    let hello = protocol::GatewayMessage::Hello { protocol_version: protocol::PROTOCOL_VERSION, gateway: "probe".into() };
    let _ = stream.write_all(&RawControl::frame(&hello));
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return println!("PROBE: silence"),
        Err(_) => return println!("PROBE: closed"),
        Ok(()) => {}
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).expect("reading a frame");
    match protocol::codec::decode_body::<protocol::HostMessage>(&body).expect("decoding") {
        protocol::HostMessage::Welcome(w) => match std::fs::File::open(shm_path(&w.segment.os_id)) {
            Ok(_) => println!("PROBE: welcome, segment readable"),
            Err(e) => println!("PROBE: welcome, segment not readable ({})", e.kind()),
        },
        other => println!("PROBE: answered {other:?}"),
    }
}

#[tokio::test]
async fn other_users_get_only_as_far_as_modes_and_peer_checks_allow() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: switching to another user needs root");
        return;
    }
    // (host flags, the probe's gid, what it must get). The probe is uid
    // 65534 (nobody), never the host's user; gid 0 is the host's group.
    let cases: [(&[&str], u32, &str); 4] = [
        (&[], 65534, "connect refused (permission denied)"),
        (&[], 0, "closed"),
        (&["--allowed-gids", "0"], 0, "welcome, segment not readable (permission denied)"),
        (&["--allowed-gids", "0", "--shm-mode", "660"], 0, "welcome, segment readable"),
    ];
    let (_probe_dir, probe) = probe_binary();
    for (flags, gid, want) in cases {
        let scratch = Scratch::new();
        // Let other users reach the socket by name (tempdirs are 0700).
        std::fs::set_permissions(scratch.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let host = scratch.start_host(flags);
        drop(connect_when_up(&scratch.socket()).await);
        let got = probe_as(&probe, &scratch.socket(), gid);
        println!("uid 65534 gid {gid} vs host {flags:?}: {got}");
        assert_eq!(got, want, "host flags {flags:?}, probe gid {gid}");
        if want == "closed" {
            assert!(host.log().contains("refused a connection from a peer"), "{}", host.log());
        }
    }
}

/// Segment names are predictable (`model-host.<pid>.<connection>`) and
/// /dev/shm is world-writable, so another user may create the next name
/// first. The host creates with O_EXCL: a squatted name costs that one
/// connection, and the host never maps or writes a file it did not create.
#[tokio::test]
async fn a_squatted_segment_name_is_refused_never_used() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let scratch = Scratch::new();
    let host = scratch.start_host(&[]);
    // The start-up sweep removes names carrying the host's own pid (left by
    // a predecessor that had the same pid, as a restarted container's
    // pid 1 does); a squatter who learns the pid squats after it.
    let swept =
        eventually(Duration::from_secs(60), async || host.log().contains("swept stale shared-memory segments")).await;
    assert!(swept.is_some(), "no start-up sweep in the host's log:\n{}", host.log());
    // Connection ids start at 1; squat the first few before the host accepts any.
    let squatted: Vec<PathBuf> =
        (1..=8).map(|id| shm_path(&protocol::shm::naming::segment_name(host.pid(), id))).collect();
    for path in &squatted {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(path).expect("squatting");
        f.write_all(b"squatter's bytes").unwrap();
    }
    drop(connect_when_up(&scratch.socket()).await);
    let mut victim = RawControl::connect(&scratch.socket()).await;
    victim.send(&protocol::GatewayMessage::Hello { protocol_version: protocol::PROTOCOL_VERSION, gateway: "victim".into() }).await;
    let heard = victim.next(Duration::from_secs(5)).await;
    let untouched = squatted.iter().all(|p| std::fs::read(p).map(|b| b == b"squatter's bytes").unwrap_or(false));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", host.pid())).unwrap_or_default();
    for path in &squatted {
        let _ = std::fs::remove_file(path);
    }
    println!("Hello while the next segment name was squatted: {heard:?}");
    assert!(matches!(heard, Heard::Closed), "expected the connection to be closed, got {heard:?}");
    assert!(untouched, "the host wrote into a squatted file");
    assert!(!maps.contains("model-host."), "the host mapped a squatted file:\n{maps}");
    // The next connection gets a fresh name and works.
    let (_, welcome) = RawControl::handshake(&scratch.socket()).await;
    assert!(welcome.segment.slot_count > 0);
}
