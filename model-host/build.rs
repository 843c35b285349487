//! Links the model-host against libtorch so that it finds it and the GPU.
//!
//! - rpath to libtorch's lib directory, so the binary runs without
//!   LD_LIBRARY_PATH on the machine it was built on (elsewhere, e.g. on a
//!   GPU machine with its own torch, LD_LIBRARY_PATH still wins: the linker
//!   writes DT_RUNPATH).
//! - `libtorch_cuda.so` with --no-as-needed: nothing in our code calls it
//!   directly, so the default --as-needed drops it, and libtorch then reports
//!   no CUDA at all. Keeping it in DT_NEEDED registers the CUDA backend at
//!   load time. It loads fine on machines without a GPU.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
