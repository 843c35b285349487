//! Only for the `dylib` feature (scripts/dev's build): the gateway binary
//! links its dependencies from gateway/dylib's shared library and Rust's
//! libstd, so it records where both are (its own directory's `deps/`, and
//! the toolchain's), and runs from wherever it is started without
//! LD_LIBRARY_PATH. Every other build links statically and needs nothing.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_DYLIB").is_none() {
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    let output = Command::new(rustc).args(["--print", "target-libdir", "--target", &target]).output().expect("running rustc --print target-libdir");
    assert!(output.status.success(), "rustc --print target-libdir failed");
    let libstd_dir = String::from_utf8(output.stdout).expect("a UTF-8 path").trim().to_string();
    // target/debug/gateway and target/debug/deps/gateway-<hash> both find
    // libgateway_dylib.so in target/debug/deps.
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/deps:$ORIGIN:{libstd_dir}");
}
