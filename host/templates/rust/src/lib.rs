//! {{name}}: a motion-host guest. It chooses the frames, names the labels and answers; the SDK
//! decodes, preprocesses and calls the model.

use motion_guest_sdk::decode::{ACCEPTS, Limits};
use motion_guest_sdk::{Classification, Clip, Error, Guest, GuestInfo, Plan, Request};
use motion_guest_sdk::{MODEL, Model};

/// The model's outputs, by index: this guest's names for them.
const LABELS: &str = "static pan_left pan_right tilt_up tilt_down zoom_in zoom_out roll_clockwise \
    roll_counterclockwise truck_left truck_right pedestal_up pedestal_down dolly_in dolly_out shake";

struct Component;

impl Guest for Component {
    fn info() -> GuestInfo {
        let labels: Vec<&str> = LABELS.split_whitespace().collect();
        // Every type the SDK decodes (PNG and JPEG frames, as parts of multipart/form-data or
        // alone; GIF; Y4M; H.264 MP4): list fewer to accept fewer. Validation sends a sample
        // of each.
        GuestInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), &labels, &ACCEPTS)
    }

    fn classify(req: Request) -> Result<Classification, Error> {
        let media = motion_guest_sdk::media(&req);
        let clip = Clip::open(&media, &Limits::default())?;
        // The model contract's choice, 8 frames evenly spaced, for the clip and for each window
        // of the timeline the request may ask for: one model input (a row) each.
        let plan = Plan::new(&req, &clip)?;
        let input = clip.planes(&plan.indices(), &Limits::default())?;
        let rows = Model::load(MODEL)?.run_rows(&input)?;
        let labels: Vec<&str> = LABELS.split_whitespace().collect();
        plan.answer(&rows, &labels, &req, &clip)
    }
}

motion_guest_sdk::export_guest!(Component);
