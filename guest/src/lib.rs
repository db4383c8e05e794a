//! The default motion-host guest, built on `motion-guest-sdk`.
//!
//! It accepts every media type the SDK's decoders read, feeds the model the contract's 8 sampled
//! frames, and names the 16 labels, which only the guest knows ([`labels`]). Everything else,
//! decoding, preprocessing, softmax and top-k, is the SDK's.

pub mod labels;

#[cfg(target_arch = "wasm32")]
mod component;
