//! What every fuzz target checks of the guest's path from upload to model input: whatever
//! the bytes, it returns, and what it accepts becomes a whole model input.

use motion_guest_sdk::decode::{Limits, Media};

/// Runs `prepare` on `media` with the default limits and checks an accepted clip's input.
pub fn prepare_checked(media: &[Media]) {
    if let Ok(prepared) = motion_guest_sdk::prepare(media, &Limits::default()) {
        assert_eq!(prepared.input.len(), motion_guest_sdk::preprocess::INPUT_LEN);
        assert!(prepared.frames_used >= 1 && prepared.frames_used <= prepared.frames_total);
    }
}
