//! The wasm component: exports `motion:guest/classifier` through the SDK.

use motion_guest_sdk::decode::{ACCEPTS, Limits};
use motion_guest_sdk::{Classification, Clip, Error, Guest, GuestInfo, Model, Plan, Request};

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
        // The whole clip's 8 frames, then each window's if a timeline was asked for: each frame
        // decoded once, every row sent in batched calls.
        let mut plan = Plan::new(&req, &clip)?;
        if cfg!(feature = "reversed") {
            plan.frames.reverse();
        }
        let input = clip.planes(&plan.indices(), &limits)?;
        let rows = Model::load(motion_guest_sdk::MODEL)?.run_rows(&input)?;
        plan.answer(&rows, &LABELS, &req, &clip)
    }
}

motion_guest_sdk::export_guest!(MotionGuest);
