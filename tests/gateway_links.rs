//! The gateway binary links no libtorch, libc10 or CUDA library; the
//! model-host does (which shows the check can tell them apart).

use std::process::Command;

use integration_tests::binary;

fn needed_libraries(name: &str) -> Vec<String> {
    let path = binary(name);
    let output = Command::new("readelf").arg("--dynamic").arg(&path).output().expect("running readelf (binutils)");
    assert!(output.status.success(), "readelf failed on {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1).map(|s| s.trim_end_matches(']').to_string()))
        .collect()
}

fn is_ml_library(lib: &str) -> bool {
    ["libtorch", "libc10", "libcuda", "libcudart", "libcudnn", "libcublas", "libnv"].iter().any(|p| lib.starts_with(p))
}

#[test]
fn gateway_links_no_torch_or_cuda() {
    let gateway = needed_libraries("gateway");
    assert!(!gateway.is_empty(), "readelf found no NEEDED entries at all");
    let bad: Vec<_> = gateway.iter().filter(|l| is_ml_library(l)).collect();
    assert!(bad.is_empty(), "gateway links {bad:?}");
    println!("gateway NEEDED: {gateway:?}");
}

#[test]
fn model_host_links_torch_and_keeps_torch_cuda() {
    let host = needed_libraries("model-host");
    assert!(host.iter().any(|l| l == "libtorch_cpu.so"), "{host:?}");
    // Kept against --as-needed by model-host/build.rs so the GPU is seen.
    assert!(host.iter().any(|l| l == "libtorch_cuda.so"), "{host:?}");
}
