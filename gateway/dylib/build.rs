//! The library binds its own references to itself when it is linked
//! (`-Bsymbolic`): otherwise the loader looks up about 110,000 symbols each
//! time a gateway starts, 57 M cycles of its start, which a rebuilt gateway
//! spends at nice 10 during scripts/dev's swap. With it, 4,700 are left
//! (2.3 M cycles). Nothing outside the library defines the symbols it
//! binds: the gateway links every crate in it from here, never a second copy.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg=-Wl,-Bsymbolic");
}
