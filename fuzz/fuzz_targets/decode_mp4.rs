//! The guest's whole path from one uploaded `video/mp4` to the model input, on arbitrary bytes:
//! the demuxer, the H.264 decoder from the keyframes before the sampled frames, and the resize.

#![no_main]

use libfuzzer_sys::fuzz_target;
use motion_guest_sdk::decode::Media;

fuzz_target!(|data: &[u8]| motion_host_fuzz::prepare_checked(&[Media { content_type: "video/mp4", data }]));
