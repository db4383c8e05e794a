//! The model's output classes, by index. Directions name the camera's own motion, seen from
//! behind the camera: in `pan_left` the camera turns left, so the picture slides right.

pub const LABELS: [&str; 16] = [
    "static",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "zoom_in",
    "zoom_out",
    "roll_clockwise",
    "roll_counterclockwise",
    "truck_left",
    "truck_right",
    "pedestal_up",
    "pedestal_down",
    "dolly_in",
    "dolly_out",
    "shake",
];
