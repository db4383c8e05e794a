//! {{name}}: a motion-host guest. It chooses the frames, names the labels and answers; the SDK
//! decodes, preprocesses and calls the model.

use motion_guest_sdk::decode::Limits;
use motion_guest_sdk::preprocess::sample_indices;
use motion_guest_sdk::{Classification, Clip, Error, Guest, GuestInfo, MODEL, Model, Request};

/// The model's outputs, by index: this guest's names for them.
const LABELS: &str = "static pan_left pan_right tilt_up tilt_down zoom_in zoom_out roll_clockwise \
    roll_counterclockwise truck_left truck_right pedestal_up pedestal_down dolly_in dolly_out shake";

/// The media types this guest accepts (multipart/form-data: PNG or JPEG frames, one per part);
/// validation sends a sample of each.
const ACCEPTS: [&str; 5] = ["multipart/form-data", "image/png", "image/jpeg", "image/gif", "video/x-yuv4mpeg"];

struct Component;

impl Guest for Component {
    fn info() -> GuestInfo {
        let labels: Vec<&str> = LABELS.split_whitespace().collect();
        GuestInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), &labels, &ACCEPTS)
    }

    fn classify(req: Request) -> Result<Classification, Error> {
        let media = motion_guest_sdk::media(&req);
        let clip = Clip::open(&media, &Limits::default())?;
        // The model contract's choice: 8 frames, evenly spaced, first and last included.
        let frames = sample_indices(clip.frame_count());
        let input = clip.planes(&frames, &Limits::default())?;
        let logits = Model::load(MODEL)?.run(&input)?;
        let labels: Vec<&str> = LABELS.split_whitespace().collect();
        Classification::from_logits(&logits, &labels, &req, &clip, &frames)
    }
}

motion_guest_sdk::export_guest!(Component);
