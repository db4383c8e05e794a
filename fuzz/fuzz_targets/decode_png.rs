//! The guest's whole path from one uploaded `image/png` to the model input, on arbitrary bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use motion_guest::decode::{Limits, Media};

fuzz_target!(|data: &[u8]| {
    let media = [Media { content_type: "image/png", data }];
    if let Ok(prepared) = motion_guest::prepare(&media, &Limits::default(), false) {
        assert_eq!(prepared.input.len(), motion_guest::preprocess::INPUT_LEN);
        assert!(prepared.frames_used >= 1 && prepared.frames_used <= prepared.frames_total);
    }
});
