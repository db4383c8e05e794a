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
    /// repeat): each frame decoded once, its bars cropped, resized to `SIZE`×`SIZE` and
    /// normalised; `indices.len() × SIZE × SIZE` values. Each run of [`FRAMES`] indices (one
    /// model input: the clip's sample, or one window of a timeline) finds its own bars
    /// ([`preprocess::Bars`]) from its own frames, as training did.
    ///
    /// A frame is resized as soon as it is decoded and then dropped, unless its input's bars are
    /// still in question (its first frame has dark, flat lines at two opposite edges), when its
    /// frames are kept until the input's last one is seen: in a guest, whose memory is fresh for
    /// every request, each page touched costs a page fault.
    pub fn planes(&self, indices: &[usize], limits: &Limits) -> Result<Vec<f32>, DecodeError> {
        let mut inputs: Vec<Input> = indices.chunks(FRAMES).map(Input::new).collect();
        self.decode_each(&preprocess::distinct(indices), limits, |index, frame| {
            let mut holders = inputs.iter_mut().filter(|input| input.wants(index)).peekable();
            while let Some(input) = holders.next() {
                if holders.peek().is_some() {
                    input.take(index, frame.clone());
                } else {
                    input.take(index, frame);
                    break;
                }
            }
        })?;
        let mut values = Vec::with_capacity(indices.len() * (SIZE * SIZE) as usize);
        for input in inputs {
            values.extend(
                preprocess::model_input(input.indices, &input.planes).map_err(DecodeError::Malformed)?,
            );
        }
        Ok(values)
    }
}

/// One model input being built: its frames' planes, and until its crop is known, its bars so far
/// and the frames that wait for them.
struct Input<'a> {
    indices: &'a [usize],
    distinct: Vec<usize>,
    bars: preprocess::Bars,
    crop: Option<preprocess::Crop>,
    waiting: Vec<(usize, preprocess::Frame)>,
    planes: Vec<(usize, Vec<f32>)>,
}

impl<'a> Input<'a> {
    fn new(indices: &'a [usize]) -> Self {
        Input {
            indices,
            distinct: preprocess::distinct(indices),
            bars: preprocess::Bars::new(),
            crop: None,
            waiting: Vec::new(),
            planes: Vec::new(),
        }
    }

    fn wants(&self, index: usize) -> bool {
        self.distinct.binary_search(&index).is_ok()
    }

    fn take(&mut self, index: usize, frame: preprocess::Frame) {
        if let Some(crop) = self.crop {
            self.planes.push((index, preprocess::resize_within(&frame, crop)));
            return;
        }
        self.bars.observe(&frame);
        self.waiting.push((index, frame));
        let complete = self.planes.len() + self.waiting.len() == self.distinct.len();
        if complete || !self.bars.possible() {
            let crop = self.bars.crop();
            self.crop = Some(crop);
            for (index, frame) in self.waiting.drain(..) {
                self.planes.push((index, preprocess::resize_within(&frame, crop)));
            }
        }
    }
}
