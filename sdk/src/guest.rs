//! The `motion:guest` world: the types a guest exchanges with its host, the [`Guest`] trait
//! whose implementation the host calls, and [`export_guest!`](crate::export_guest) to export it.

/// The world's bindings, generated from the WIT this crate carries. A guest needs them only for
/// what this module does not re-export.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "motion-guest",
        path: "wit",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_guest",
        default_bindings_module: "motion_guest_sdk::bindings",
    });
}

/// Exports a type implementing [`Guest`] as the component's `motion:guest/classifier`:
/// `motion_guest_sdk::export_guest!(MyGuest);` once, at the top level of the guest crate.
pub use bindings::export_guest;
pub use bindings::exports::motion::guest::classifier::Guest;
pub use bindings::motion::guest::types::{
    Classification, Error, GuestInfo, LabelScore, Request, Segment, Segmentation,
};

use crate::decode::{Clip, DecodeError, Media};
use crate::postprocess::{softmax, top_k as top_k_of};
use crate::preprocess::{FRAMES, SIZE, distinct};
use crate::timeline::{self, Window};

/// The request's media as the decoders read them: borrowed, not copied.
pub fn media(req: &Request) -> Vec<Media<'_>> {
    req.media.iter().map(|m| Media { content_type: &m.content_type, data: &m.data }).collect()
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Unsupported(m) => Error::UnsupportedMedia(m),
            DecodeError::Malformed(m) => Error::BadInput(m),
        }
    }
}

impl GuestInfo {
    /// The description of a guest for the default model (`motion-resnet18`, input
    /// `[-1, 8, 112, 112]`) with its own name, version, labels and accepted media types.
    pub fn new(name: &str, version: &str, labels: &[&str], accepts: &[&str]) -> GuestInfo {
        GuestInfo {
            name: name.into(),
            version: version.into(),
            model: crate::MODEL.into(),
            input_shape: vec![-1, FRAMES as i64, i64::from(SIZE), i64::from(SIZE)],
            labels: labels.iter().map(|l| l.to_string()).collect(),
            accepts: accepts.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl Classification {
    /// The answer from a model's logits: softmax over them, the request's `top_k` best labels,
    /// and the frames counted from `clip` and the `frames` that fed the model. No segments.
    pub fn from_logits(
        logits: &[f32],
        labels: &[&str],
        req: &Request,
        clip: &Clip,
        frames: &[usize],
    ) -> Result<Classification, Error> {
        let top = ranked(logits, labels, req.top_k)?;
        Ok(Classification {
            label: top[0].label.clone(),
            score: top[0].score,
            top_k: top,
            frames_total: u32::try_from(clip.frame_count()).unwrap_or(u32::MAX),
            frames_used: distinct(frames).len() as u32,
            segments: Vec::new(),
        })
    }
}

impl Segment {
    /// A window's answer from the model's logits for its input.
    pub fn from_logits(
        window: &Window,
        logits: &[f32],
        labels: &[&str],
        top_k: u32,
    ) -> Result<Segment, Error> {
        let top = ranked(logits, labels, top_k)?;
        Ok(Segment {
            start_frame: u32::try_from(window.start).unwrap_or(u32::MAX),
            end_frame: u32::try_from(window.end).unwrap_or(u32::MAX),
            start_s: window.start_s,
            end_s: window.end_s,
            label: top[0].label.clone(),
            score: top[0].score,
            top_k: top,
        })
    }
}

impl From<Segmentation> for timeline::Segmentation {
    fn from(s: Segmentation) -> Self {
        match s {
            Segmentation::Seconds(s) => timeline::Segmentation::Seconds(s),
            Segmentation::Frames(n) => timeline::Segmentation::Frames(n),
        }
    }
}

/// The model inputs a request needs: one of the whole clip's `frames`, then one per window of
/// the timeline it asked for (none when it asked for none).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The whole clip's frames, by the contract's sampling unless the guest chooses others.
    pub frames: Vec<usize>,
    pub windows: Vec<Window>,
}

impl Plan {
    /// The contract's 8 frames of `clip`, and the windows of the request's timeline.
    pub fn new(req: &Request, clip: &Clip) -> Result<Plan, Error> {
        let windows = match req.segments {
            None => Vec::new(),
            Some(how) => timeline::windows(
                clip.frame_count(),
                clip.timing().as_ref(),
                how.into(),
                req.max_segments as usize,
            )
            .map_err(Error::BadRequest)?,
        };
        Ok(Plan { frames: crate::preprocess::sample_indices(clip.frame_count()).to_vec(), windows })
    }

    /// The frames of every row, in row order: pass them to [`Clip::planes`], which decodes each
    /// frame once, and the planes to [`Model::run_rows`](crate::Model::run_rows).
    pub fn indices(&self) -> Vec<usize> {
        let mut indices = self.frames.clone();
        indices.extend(self.windows.iter().flat_map(Window::sample_indices));
        indices
    }

    /// The answer from each row's logits: the whole clip's, with a segment per window.
    pub fn answer(
        &self,
        rows: &[Vec<f32>],
        labels: &[&str],
        req: &Request,
        clip: &Clip,
    ) -> Result<Classification, Error> {
        if rows.len() != 1 + self.windows.len() {
            return Err(Error::Inference(format!(
                "the model answered {} rows of {}",
                rows.len(),
                1 + self.windows.len()
            )));
        }
        let mut answer = Classification::from_logits(&rows[0], labels, req, clip, &self.frames)?;
        answer.segments = self
            .windows
            .iter()
            .zip(&rows[1..])
            .map(|(window, logits)| Segment::from_logits(window, logits, labels, req.top_k))
            .collect::<Result<_, _>>()?;
        Ok(answer)
    }
}

/// The `top_k` best labels for `logits`, best first, with their softmax probabilities.
fn ranked(logits: &[f32], labels: &[&str], top_k: u32) -> Result<Vec<LabelScore>, Error> {
    if labels.is_empty() {
        return Err(Error::Inference("this guest names no labels".into()));
    }
    if logits.len() != labels.len() {
        return Err(Error::Inference(format!(
            "the model returned {} logits; this guest names {} labels",
            logits.len(),
            labels.len()
        )));
    }
    let scores = softmax(logits).map_err(Error::Inference)?;
    let k = (top_k as usize).clamp(1, labels.len());
    Ok(top_k_of(&scores, k)
        .into_iter()
        .map(|i| LabelScore { label: labels[i].to_string(), score: scores[i] })
        .collect())
}
