//! The component starts with the memory a typical clip needs, so a request's guest never grows
//! it. Each `memory.grow` is a call out of wasm and a change of the pages' protection, and the
//! host shrinks a slot back to the module's initial size, another protection change over pages
//! still resident, before the slot's next guest: measured, about 26 grows for the benchmark's
//! PNG clip and 11 for its Y4M, and 0.1–0.2 ms an instantiation. wasi-libc's allocator, which
//! Rust's standard library uses on WASI, takes the initial memory above the data and stack as
//! its first heap; a larger clip still grows memory beyond it.

/// The guest's initial linear memory: the 1 MiB stack and the data below it, and the heap for
/// an upload of a few MiB and its frames.
const INITIAL_MEMORY_BYTES: u32 = 8 << 20;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=--initial-memory={INITIAL_MEMORY_BYTES}");
    }
}
