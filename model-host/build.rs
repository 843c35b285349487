//! Links the model-host against libtorch so that it finds it and the GPU,
//! and builds the C++ shim (shim/torch_shim.cpp, see src/torch_shim/).
//!
//! - rpath to libtorch's lib directory, so the binary runs without
//!   LD_LIBRARY_PATH on the machine it was built on (elsewhere, e.g. on a
//!   GPU machine with its own torch, LD_LIBRARY_PATH still wins: the linker
//!   writes DT_RUNPATH).
//! - `libtorch_cuda.so` with --no-as-needed: nothing in our code calls it
//!   directly, so the default --as-needed drops it, and libtorch then reports
//!   no CUDA at all. Keeping it in DT_NEEDED registers the CUDA backend at
//!   load time. It loads fine on machines without a GPU.
//! - The shim is compiled against the headers of the same libtorch. Its
//!   CUDA graph part needs the CUDA runtime's headers, which the torch
//!   wheel's `nvidia-cuda-runtime` dependency ships beside it; without them
//!   (a CPU-only libtorch) the shim is built without graphs and says so at
//!   run time. The shim calls only libtorch, never the CUDA runtime itself,
//!   so it runs against any libtorch of the same version.
//! - The JPEG part (shim/jpeg_shim.cpp) takes nvJPEG's types from the
//!   nvidia-nvjpeg wheel's nvjpeg.h in the same place, and opens
//!   libnvjpeg at run time (dlopen): nothing links it.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=shim/torch_shim.cpp");
    println!("cargo:rerun-if-changed=shim/jpeg_shim.cpp");
    println!("cargo:rerun-if-changed=shim/stream_shim.cpp");
    println!("cargo:rerun-if-changed=shim/shim_errors.h");
    println!("cargo:rerun-if-changed=shim/freeze_equal.cpp");
    println!("cargo:rerun-if-changed=shim/freeze_equal.h");
    println!("cargo:rerun-if-changed=shim/weights_stream.cpp");
    println!("cargo:rerun-if-changed=shim/weights_stream.h");
    println!("cargo:rerun-if-changed=shim/counting_adapter.h");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)");
    };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // For run-time lookups beside libtorch (the nvJPEG wheel's library).
    println!("cargo:rustc-env=MODEL_HOST_LIBTORCH_LIB={}", lib.display());
    let cuda = lib.join("libtorch_cuda.so").exists();
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    build_shim(&lib, cuda);
}

fn build_shim(lib: &Path, cuda: bool) {
    // Through any link (.venv/torch): the nvidia wheels sit beside the real one.
    let lib = lib.canonicalize().unwrap_or_else(|_| lib.to_path_buf());
    let root = lib.parent().expect("libtorch's lib directory has a parent");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("shim/torch_shim.cpp")
        .file("shim/jpeg_shim.cpp")
        .file("shim/stream_shim.cpp")
        .file("shim/freeze_equal.cpp")
        .file("shim/weights_stream.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false);
    let cuda_headers = cuda.then(|| cuda_runtime_headers(root)).flatten();
    match &cuda_headers {
        Some(dir) => {
            build.include(dir).define("SHIM_WITH_CUDA", None);
            // nvJPEG's types for the host-side decode (jpeg_shim.cpp); the
            // library itself is opened at run time, never linked.
            if dir.join("nvjpeg.h").exists() {
                build.define("SHIM_WITH_NVJPEG", None);
            } else {
                println!("cargo:warning=torch shim built without nvJPEG (no nvjpeg.h beside libtorch: scripts/setup installs it)");
            }
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        None => println!("cargo:warning=torch shim built without CUDA graphs (no CUDA runtime headers beside libtorch)"),
    }
    build.compile("torch_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
}

/// `cuda_runtime_api.h` from the nvidia wheels beside torch in site-packages.
fn cuda_runtime_headers(torch_root: &Path) -> Option<PathBuf> {
    let nvidia = torch_root.parent()?.join("nvidia");
    let candidates = std::fs::read_dir(&nvidia).ok()?.flatten().map(|e| e.path().join("include"));
    candidates.into_iter().find(|dir| dir.join("cuda_runtime_api.h").exists())
}
