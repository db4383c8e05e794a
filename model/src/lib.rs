//! The models motion-host serves: manifests (`models/<name>/model.toml`), the registry that
//! `wasi:nn` looks names up in, and the libtorch backend (one inference thread per model,
//! batching, the checks that a model's output fits its manifest).
//!
//! Architecture invariant: this is the only crate that depends on tch, and no tch type appears
//! in its public API (`tests/layers.rs` holds both).

mod backend;
mod device;
mod error;
mod manifest;
mod memory;
mod openmp;
mod optimised;
mod precision;
mod progress;
mod registry;

pub use backend::{
    BareInput, BareModel, BatchObserver, Batching, DeviceChoice, Expected, Input, MAX_ROWS_PER_CALL, Model,
    Output, Tuning,
};
pub use device::DeviceKind;
pub use error::{BackendError, ModelError};
pub use manifest::{Manifest, TensorSpec};
pub use openmp::spin_briefly_between_operators;
pub use precision::Precision;
pub use progress::{Progress, Stage};
pub use registry::ModelRegistry;
