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
    /// every request, each page touched costs a page fault. Where keeping them would take more
    /// than [`HELD_BYTES`] in all (frames larger than 1080p, or several timeline windows in
    /// question at once), an input's frames are decoded twice instead: once to find its bars,
    /// once to resize.
    pub fn planes(&self, indices: &[usize], limits: &Limits) -> Result<Vec<f32>, DecodeError> {
        let mut inputs: Vec<Input> = indices.chunks(FRAMES).map(Input::new).collect();
        self.decode_each(&preprocess::distinct(indices), limits, |index, frame| {
            deliver(&mut inputs, index, frame)
        })?;
        let missing: Vec<usize> = inputs.iter().flat_map(Input::missing).collect();
        let again = preprocess::distinct(&missing);
        if !again.is_empty() {
            self.decode_each(&again, limits, |index, frame| deliver(&mut inputs, index, frame))?;
        }
        let mut values = Vec::with_capacity(indices.len() * (SIZE * SIZE) as usize);
        for input in inputs {
            preprocess::extend_model_input(&mut values, input.indices, &input.planes)
                .map_err(DecodeError::Malformed)?;
        }
        Ok(values)
    }
}

/// The most the model inputs of one call keep of full-size frames while their bars are in
/// question: 8 frames of 1920×1080 luma.
pub const HELD_BYTES: usize = 64 << 20;

/// Hands a decoded frame to every input that samples it and has not resized it yet.
fn deliver(inputs: &mut [Input], index: usize, frame: preprocess::Frame) {
    let wanting: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].wants(index)).collect();
    for (n, &i) in wanting.iter().enumerate() {
        let held: usize = inputs.iter().map(Input::held_bytes).sum();
        let room = HELD_BYTES.saturating_sub(held);
        if n + 1 < wanting.len() {
            inputs[i].take(index, frame.clone(), room);
        } else {
            inputs[i].take(index, frame, room);
            break;
        }
    }
}

/// One model input being built: its frames' planes, and until its crop is known, its bars so far
/// and the frames that wait for them. A deferred input keeps none: it finds its bars on a first
/// decoding of its frames and is resized on a second.
struct Input<'a> {
    indices: &'a [usize],
    distinct: Vec<usize>,
    bars: preprocess::Bars,
    crop: Option<preprocess::Crop>,
    waiting: Vec<(usize, preprocess::Frame)>,
    seen: usize,
    deferred: bool,
    planes: Vec<(usize, Vec<f32>)>,
    /// The last frame size's resizer: a clip's frames are mostly all one size.
    resizer: Option<preprocess::Resizer>,
}

impl<'a> Input<'a> {
    fn new(indices: &'a [usize]) -> Self {
        Input {
            indices,
            distinct: preprocess::distinct(indices),
            bars: preprocess::Bars::new(),
            crop: None,
            waiting: Vec::new(),
            seen: 0,
            deferred: false,
            planes: Vec::new(),
            resizer: None,
        }
    }

    fn wants(&self, index: usize) -> bool {
        self.distinct.binary_search(&index).is_ok() && self.planes.iter().all(|(i, _)| *i != index)
    }

    /// The frames it still needs planes of: after the first decoding, those a deferred input
    /// saw before it knew its bars.
    fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        self.distinct.iter().copied().filter(|&i| self.planes.iter().all(|(p, _)| *p != i))
    }

    fn held_bytes(&self) -> usize {
        self.waiting.iter().map(|(_, f)| f.luma.len() * std::mem::size_of::<f32>()).sum()
    }

    /// Takes one of its frames; `room` is what it may still keep of frames in question.
    fn take(&mut self, index: usize, frame: preprocess::Frame, room: usize) {
        if let Some(crop) = self.crop {
            self.resize(index, &frame, crop);
            return;
        }
        self.bars.observe(&frame);
        self.seen += 1;
        let complete = self.seen == self.distinct.len();
        if !self.bars.possible() || (complete && !self.deferred) {
            let crop = self.bars.crop();
            self.crop = Some(crop);
            self.waiting.push((index, frame));
            for (index, frame) in std::mem::take(&mut self.waiting) {
                self.resize(index, &frame, crop);
            }
            return;
        }
        if !self.deferred && frame.luma.len() * std::mem::size_of::<f32>() > room {
            // No room to keep it: find the bars on this decoding, resize on a second one.
            self.deferred = true;
            self.waiting.clear();
        }
        if self.deferred {
            if complete {
                self.crop = Some(self.bars.crop());
            }
        } else {
            self.waiting.push((index, frame));
        }
    }

    /// Resizes frame `index` within `crop` and keeps its plane.
    fn resize(&mut self, index: usize, frame: &preprocess::Frame, crop: preprocess::Crop) {
        let mut resizer = match self.resizer.take() {
            Some(resizer) if resizer.fits(frame.width, frame.height, crop) => resizer,
            _ => preprocess::Resizer::new(frame.width, frame.height, crop),
        };
        self.planes.push((index, resizer.resize(frame)));
        self.resizer = Some(resizer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mono Y4M of `frames` frames of `width`×`height`, textured, with `bar` black rows at the
    /// top and bottom.
    fn y4m(width: usize, height: usize, frames: usize, bar: usize) -> Vec<u8> {
        let mut data = format!("YUV4MPEG2 W{width} H{height} F25:1 Cmono\n").into_bytes();
        for f in 0..frames {
            data.extend_from_slice(b"FRAME\n");
            data.extend((0..width * height).map(|i| {
                let y = i / width;
                if y < bar || y >= height - bar { 0 } else { 60 + ((i * 7 + f * 13 + y * 3) % 150) as u8 }
            }));
        }
        data
    }

    /// The planes as the contract defines them: all sampled frames at once, their bars, then
    /// each resized within them.
    fn reference(clip: &Clip, indices: &[usize]) -> Vec<f32> {
        let mut out = Vec::new();
        for row in indices.chunks(FRAMES) {
            let frames = clip.decode(&preprocess::distinct(row), &Limits::default()).unwrap();
            let mut bars = preprocess::Bars::new();
            frames.iter().for_each(|(_, f)| bars.observe(f));
            let planes: Vec<(usize, Vec<f32>)> =
                frames.iter().map(|(i, f)| (*i, preprocess::resize_within(f, bars.crop()))).collect();
            out.extend(preprocess::model_input(row, &planes).unwrap());
        }
        out
    }

    #[test]
    fn planes_crop_alike_whether_frames_are_kept_or_decoded_twice() {
        // Small frames with bars are kept; frames too large to keep eight of are decoded twice;
        // frames without bars are resized as they come; a timeline's rows each find their bars.
        for (width, height, bar, frames) in [(320, 180, 20, 16), (2200, 1200, 150, 12), (2200, 1200, 0, 12)] {
            let data = y4m(width, height, frames, bar);
            let media = [Media { content_type: "video/x-yuv4mpeg", data: &data }];
            let clip = Clip::open(&media, &Limits::default()).unwrap();
            let mut indices = preprocess::sample_indices(frames).to_vec();
            indices.extend((0..FRAMES).map(|i| i % 5));
            let got = clip.planes(&indices, &Limits::default()).unwrap();
            assert_eq!(got, reference(&clip, &indices), "{width}x{height}, bars of {bar}");
            // The bars were taken away: the input's first row is the picture, not black.
            assert!(got[0] > preprocess::normalise(0.2), "{width}x{height}: the bars were left in");
        }
    }
}
