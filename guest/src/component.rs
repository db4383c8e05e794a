//! The wasm component: exports `motion:guest/classifier` through the SDK.

use motion_guest_sdk::decode::{ACCEPTS, Limits};
use motion_guest_sdk::preprocess::sample_indices;
use motion_guest_sdk::{Classification, Clip, Error, Guest, GuestInfo, Model, Request, Segment};

use crate::labels::LABELS;

struct MotionGuest;

/// This build's version; the `reversed` test variant says so.
const VERSION: &str = if cfg!(feature = "reversed") {
    concat!(env!("CARGO_PKG_VERSION"), "-reversed")
} else {
    env!("CARGO_PKG_VERSION")
};

impl Guest for MotionGuest {
    fn info() -> GuestInfo {
        let mut labels = LABELS;
        if cfg!(feature = "test-duplicate-label") {
            labels[1] = LABELS[0];
        }
        GuestInfo::new("motion", VERSION, &labels, &ACCEPTS)
    }

    fn classify(req: Request) -> Result<Classification, Error> {
        if cfg!(feature = "test-failing-classify") {
            return Err(Error::Inference("this test build fails every classification".into()));
        }
        let limits = Limits::default();
        let media = motion_guest_sdk::media(&req);
        let clip = Clip::open(&media, &limits)?;
        let mut frames = sample_indices(clip.frame_count());
        if cfg!(feature = "reversed") {
            frames.reverse();
        }
        // One model input for the whole clip, then one per window of the timeline, if asked:
        // each frame decoded once, all rows sent in batched calls.
        let windows = motion_guest_sdk::windows(&req, &clip)?;
        let mut indices = frames.to_vec();
        indices.extend(windows.iter().flat_map(|w| w.sample_indices()));
        let input = clip.planes(&indices, &limits)?;
        let logits = Model::load(motion_guest_sdk::MODEL)?.run_rows(&input)?;
        let mut answer = Classification::from_logits(&logits[0], &LABELS, &req, &clip, &frames)?;
        answer.segments = windows
            .iter()
            .zip(&logits[1..])
            .map(|(window, logits)| Segment::from_logits(window, logits, &LABELS, req.top_k))
            .collect::<Result<_, _>>()?;
        Ok(answer)
    }
}

motion_guest_sdk::export_guest!(MotionGuest);
