//! Host bindings for our world (`wit/motion-guest.wit`) and the vendored standard `wasi:nn`
//! WIT it imports, generated at build time.

wasmtime::component::bindgen!({
    world: "motion-guest",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:nn/graph.graph": crate::nn::GraphResource,
        "wasi:nn/inference.graph-execution-context": crate::nn::ContextResource,
        "wasi:nn/tensor.tensor": crate::nn::TensorResource,
        "wasi:nn/errors.error": crate::nn::ErrorResource,
    },
});
