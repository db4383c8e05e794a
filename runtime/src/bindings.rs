//! Host bindings for the two versions of our world, generated at build time: `motion:guest@0.2.0`
//! (`wit/motion-guest.wit`) and `motion:guest@0.1.0` (`wit/v0.1`), served side by side. Their
//! `wasi:nn` imports are motion-nn's bindings, which that crate implements.

/// `motion:guest@0.2.0`: the timeline.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "motion-guest",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "wasi:nn": motion_nn::bindings::wasi::nn },
    });
}

/// `motion:guest@0.1.0`: the whole clip only.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "motion-guest",
        path: "../wit/v0.1",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "wasi:nn": motion_nn::bindings::wasi::nn },
    });
}
