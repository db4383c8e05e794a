//! Host bindings for our world (`wit/motion-guest.wit`), generated at build time. Its `wasi:nn`
//! imports are motion-nn's bindings, which that crate implements.

wasmtime::component::bindgen!({
    world: "motion-guest",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
    with: { "wasi:nn": motion_nn::bindings::wasi::nn },
});
