//! The default motion-host guest.
//!
//! It turns an uploaded clip into the model's input, asks the host to run the model through the
//! standard `wasi:nn` interface, and turns the logits into named labels. Everything but the
//! `wasi:nn` calls is plain Rust that also builds natively, so it is unit-tested off wasm:
//!
//! - [`decode`] reads PNG, JPEG, GIF and Y4M into luma frames, checking declared sizes before
//!   it allocates;
//! - [`preprocess`] samples 8 frames, resizes them to 112×112 and normalises them, exactly as
//!   the model contract says;
//! - [`postprocess`] turns logits into a probability distribution and its top-k;
//! - [`labels`] holds the 16 label names, which only the guest knows.

pub mod decode;
pub mod labels;
pub mod postprocess;
pub mod preprocess;

#[cfg(target_arch = "wasm32")]
mod component;

/// The model this guest was written for, as the host registers it.
pub const MODEL_NAME: &str = "motion-resnet18";
/// The name of the model's input tensor.
pub const INPUT_TENSOR: &str = "input";
/// The name of the model's output tensor.
pub const OUTPUT_TENSOR: &str = "logits";
