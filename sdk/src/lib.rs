//! Write [motion-host](https://github.com/motion-host/motion-host) guests in Rust.
//!
//! A guest is a WebAssembly component that turns an uploaded clip into the model's input, asks
//! the host to run the model through the standard `wasi:nn` interface, and turns the output into
//! named labels. This crate gives a guest everything but its own choices:
//!
//! - the `motion:guest` world: implement [`Guest`] and call [`export_guest!`];
//! - [`Model`]: `wasi:nn` without its ceremony (load a model by name, named tensors in and out,
//!   several rows per call);
//! - [`decode`]: the PNG, JPEG, GIF, Y4M and MP4 (H.264, in [`video`]) decoders of the model
//!   contract, which check every declared size before they allocate;
//! - [`preprocess`]: the contract's 8-frame sampling, 112×112 luma resize and normalisation;
//! - [`postprocess`]: softmax and top-k;
//! - [`timeline`]: a clip cut into windows of seconds or frames, each classified on its own.
//!
//! Everything but the world and [`Model`] is plain Rust that builds natively too, so a guest's
//! logic can be unit-tested off wasm. A whole guest:
//!
//! ```ignore
//! use motion_guest_sdk::{Classification, Clip, Error, Guest, GuestInfo, Model, Request};
//!
//! struct Mine;
//!
//! impl Guest for Mine {
//!     fn info() -> GuestInfo {
//!         GuestInfo::new("mine", "0.1.0", &LABELS, &["image/png", "video/x-yuv4mpeg"])
//!     }
//!
//!     fn classify(req: Request) -> Result<Classification, Error> {
//!         let media = motion_guest_sdk::media(&req);
//!         let clip = Clip::open(&media, &Default::default())?;
//!         let frames = motion_guest_sdk::preprocess::sample_indices(clip.frame_count());
//!         let input = clip.planes(&frames, &Default::default())?;
//!         let logits = Model::load(motion_guest_sdk::MODEL)?.run(&input)?;
//!         Classification::from_logits(&logits, &LABELS, &req, &clip, &frames)
//!     }
//! }
//!
//! motion_guest_sdk::export_guest!(Mine);
//! ```

pub mod decode;
pub mod postprocess;
pub mod preprocess;
pub mod timeline;
pub mod video;

#[cfg(target_arch = "wasm32")]
mod guest;
#[cfg(target_arch = "wasm32")]
mod nn;

#[cfg(target_arch = "wasm32")]
pub use guest::*;
#[cfg(target_arch = "wasm32")]
pub use nn::{Model, Outputs, Tensor};

pub use decode::{Clip, DecodeError, Limits, Media};
pub use preprocess::{FRAMES, SIZE};

/// The default model, as the host registers it.
pub const MODEL: &str = "motion-resnet18";
/// The name of the default model's input tensor, `[N, 8, 112, 112]` FP32.
pub const INPUT_TENSOR: &str = "input";
/// The name of the default model's output tensor, `[N, labels]` FP32 logits.
pub const OUTPUT_TENSOR: &str = "logits";

/// The bytes of `values` as a wasi:nn FP32 tensor holds them (little-endian): on wasm, whose
/// memory is little-endian, a view of the values' memory, not a copy.
#[cfg(target_endian = "little")]
pub fn le_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: the slice covers exactly the memory of `values`, which lives as long as it; an f32
    // has no padding and every byte is a valid u8.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// A clip turned into the model input.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `[1, 8, 112, 112]`, row-major.
    pub input: Vec<f32>,
    /// Frames in the clip.
    pub frames_total: usize,
    /// Distinct frames that were decoded and fed to the model.
    pub frames_used: usize,
}

/// The model contract from upload to model input: reads the headers against `limits`, samples 8
/// frames, decodes only those, and builds the input.
pub fn prepare(media: &[Media], limits: &Limits) -> Result<Prepared, DecodeError> {
    let clip = Clip::open(media, limits)?;
    let frames_total = clip.frame_count();
    let indices = preprocess::sample_indices(frames_total);
    let input = clip.planes(&indices, limits)?;
    Ok(Prepared { input, frames_total, frames_used: preprocess::distinct(&indices).len() })
}

impl Clip<'_> {
    /// The model's input planes for the frames at `indices`, in that order (an index may
    /// repeat): each frame decoded once, resized to `SIZE`×`SIZE` and normalised;
    /// `indices.len() × SIZE × SIZE` values.
    ///
    /// Each frame is resized as soon as it is decoded and then dropped, so one full-size frame is
    /// alive at a time: in a guest, whose memory is fresh for every request, each page touched
    /// costs a page fault.
    pub fn planes(&self, indices: &[usize], limits: &Limits) -> Result<Vec<f32>, DecodeError> {
        let wanted = preprocess::distinct(indices);
        let mut planes = Vec::with_capacity(wanted.len());
        self.decode_each(&wanted, limits, |index, frame| planes.push((index, preprocess::resize(&frame))))?;
        preprocess::model_input(indices, &planes).map_err(DecodeError::Malformed)
    }
}
