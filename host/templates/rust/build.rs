//! Links the component with the memory a typical clip needs, so a request never grows it: each
//! `memory.grow` is a call out of wasm and a change of page protection, in every request, since
//! each request starts from the initial memory.

/// The 1 MiB stack and the data below it, and the heap for an upload of a few MiB and its frames.
const INITIAL_MEMORY_BYTES: u32 = 8 << 20;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=--initial-memory={INITIAL_MEMORY_BYTES}");
    }
}
