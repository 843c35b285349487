//! Every unit in systemd/ passes `systemd-analyze verify`, and its security
//! exposure (`systemd-analyze security --offline=true`) stays low.

use std::path::Path;
use std::process::Command;

use integration_tests::{binary, root};

/// Units with ExecStart pointed at the freshly built binaries (verify
/// checks that they exist), template instances named, in a scratch dir.
fn prepared_units() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = binary("gateway").parent().unwrap().display().to_string();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".socket")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().replace("/usr/local/bin", &bin_dir);
        let name = name.replace("@.", "@1.");
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(name);
    }
    names.sort();
    assert!(names.len() >= 5, "expected the host, gateway and template units, got {names:?}");
    (dir, names)
}

fn analyze(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn units_verify_cleanly() {
    let (dir, names) = prepared_units();
    for name in &names {
        let (ok, text) = analyze(dir.path(), &["verify", "--man=no", &format!("./{name}")]);
        assert!(ok && text.trim().is_empty(), "systemd-analyze verify {name}:\n{text}");
    }
}

#[test]
fn verify_rejects_a_broken_unit() {
    // The check above can fail: a unit with a typo does not pass.
    let (dir, _) = prepared_units();
    let text = std::fs::read_to_string(dir.path().join("model-host.service")).unwrap();
    std::fs::write(dir.path().join("broken.service"), text.replace("Type=notify", "Tpye=notify")).unwrap();
    let (ok, out) = analyze(dir.path(), &["verify", "--man=no", "./broken.service"]);
    assert!(!ok || !out.trim().is_empty(), "a misspelt key went unnoticed");
}

#[test]
fn services_are_hardened() {
    let (dir, names) = prepared_units();
    for name in names.iter().filter(|n| n.ends_with(".service")) {
        let (ok, text) = analyze(dir.path(), &["security", "--offline=true", &format!("./{name}")]);
        assert!(ok, "systemd-analyze security {name}:\n{text}");
        let line = text.lines().find(|l| l.contains("Overall exposure level")).expect("an exposure line");
        let score: f64 = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no score in {line:?}"));
        println!("{name}: exposure {score}");
        assert!(score <= 2.0, "{name}: exposure {score} (want <= 2.0):\n{text}");
    }
}
