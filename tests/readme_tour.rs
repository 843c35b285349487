//! The README's two-minute tour, run as a user would paste it: every ```sh
//! block of its "A two-minute tour" section, in one shell, in a directory
//! that looks like the checkout (`models`, `.venv`, and `target/release`
//! standing for this build's `target/debug`). Only the ports change (a free
//! one for 8080 and one for Triton's 8001), so that the test never takes a
//! port someone else uses. Each block's answer is checked for what the
//! README says it shows; the tour's own `kill $(jobs -p)` ends it.
//! A README edit that breaks a command fails here.

use std::process::{Command, Stdio};

use integration_tests::*;

/// The ```sh blocks of README.md's tour section, in order.
fn tour_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("reading README.md");
    let start = readme.find("## A two-minute tour").expect("README.md has a tour section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section[..end].lines() {
        match (line.trim_end(), current.as_mut()) {
            ("```sh", None) => current = Some(String::new()),
            ("```", Some(_)) => blocks.push(current.take().expect("inside a block")),
            (_, Some(block)) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 4, "the tour has fewer sh blocks than expected: {blocks:?}");
    blocks
}

#[test]
fn the_readme_tour_runs_as_written() {
    binary("gateway"); // builds both binaries
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    std::os::unix::fs::symlink(root().join("models"), dir.join("models")).expect("models link");
    std::os::unix::fs::symlink(root().join(".venv"), dir.join(".venv")).expect(".venv link");
    std::fs::create_dir(dir.join("target")).expect("target dir");
    let built = binary("gateway").parent().expect("target/<profile>").to_path_buf();
    std::os::unix::fs::symlink(built, dir.join("target/release")).expect("target/release link");

    let (http, grpc) = (free_port(), free_port());
    let blocks = tour_blocks();
    // The first block asks the digits model; the fleet (the second block)
    // serves it too, so it runs after the fleet is ready.
    let (first, start, rest) = (&blocks[0], &blocks[1], &blocks[2..]);
    let mut script = String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n");
    script.push_str(&format!("echo '=== start'\n{start}\n"));
    script.push_str("for i in $(seq 600); do curl -sf -o /dev/null localhost:8080/health/ready && break; sleep 0.2; done\n");
    for (i, block) in std::iter::once(first).chain(rest).enumerate() {
        script.push_str(&format!("echo '=== block {i}'\n{block}\n"));
    }
    script.push_str("echo '=== done'\n");
    let script = script.replace("localhost:8080", &format!("127.0.0.1:{http}")).replace("127.0.0.1:8001", &format!("127.0.0.1:{grpc}"));

    let output = Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir)
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{http}"))
        .env("GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("MODEL_HOST_DEVICE", "cpu")
        .stdin(Stdio::null())
        .output()
        .expect("running the tour");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs: String = ["digits", "shapes-detector", "shapes-segmenter", "gateway"]
        .iter()
        .map(|n| format!("--- .run/{n}.log\n{}", std::fs::read_to_string(dir.join(format!(".run/{n}.log"))).unwrap_or_default()))
        .collect();
    let shown = format!("script:\n{script}\nstdout:\n{stdout}\nstderr:\n{}\n{logs}", String::from_utf8_lossy(&output.stderr));
    println!("{stdout}");
    assert!(output.status.success(), "the tour failed ({}):\n{shown}", output.status);
    assert!(stdout.contains("=== done"), "the tour stopped early:\n{shown}");

    let part = |n: usize| stdout.split(&format!("=== block {n}\n")).nth(1).and_then(|s| s.split("=== ").next()).unwrap_or_default();
    assert!(part(0).contains(r#""label":"7""#), "the digit is not a 7:\n{shown}");
    assert!(part(1).contains(r#""detections":[{"#), "no detections:\n{shown}");
    assert!(part(2).contains(r#""classes":[{"#), "no segmentation classes:\n{shown}");
    let cutout = std::fs::read(dir.join("cutout.png")).expect("the tour's cutout.png");
    assert!(cutout.starts_with(b"\x89PNG"), "cutout.png is not a PNG");
    assert!(part(3).contains("PROBABILITIES") && part(3).contains("[["), "no v2 metadata or Triton answer:\n{shown}");
}
