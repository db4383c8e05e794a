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

use decode::{Clip, DecodeError, Limits, Media};

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

/// Everything between the upload and the model: reads the headers against `limits`, samples
/// the frames, decodes only those, and builds the model input. With `reverse`, the sampled
/// frames feed the model in reverse time order.
///
/// Each frame is resized as soon as it is decoded and then dropped, so one full-size frame is
/// alive at a time: in a guest, whose memory is fresh for every request, each page touched
/// costs a page fault.
pub fn prepare(media: &[Media], limits: &Limits, reverse: bool) -> Result<Prepared, DecodeError> {
    let clip = Clip::open(media, limits)?;
    let frames_total = clip.frame_count();
    let mut indices = preprocess::sample_indices(frames_total);
    if reverse {
        indices.reverse();
    }
    let wanted = preprocess::distinct(&indices);
    let mut planes = Vec::with_capacity(wanted.len());
    clip.decode_each(&wanted, limits, |index, frame| planes.push((index, preprocess::resize(&frame))))?;
    let input = preprocess::model_input(&indices, &planes).map_err(DecodeError::Malformed)?;
    Ok(Prepared { input, frames_total, frames_used: wanted.len() })
}
