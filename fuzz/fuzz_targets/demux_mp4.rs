//! The MP4 demuxer alone, on arbitrary bytes: the box scan, the sample tables and the checks
//! made before any picture is decoded. Whatever it accepts has frames, each with a time, in
//! display order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use motion_guest_sdk::decode::Limits;
use motion_guest_sdk::video::Mp4;

fuzz_target!(|data: &[u8]| {
    if let Ok(mp4) = Mp4::parse(data, &Limits::default()) {
        assert!(mp4.frame_count() >= 1);
        assert_eq!(mp4.times().len(), mp4.frame_count());
        assert!(mp4.times().windows(2).all(|w| w[0] <= w[1]));
    }
});
