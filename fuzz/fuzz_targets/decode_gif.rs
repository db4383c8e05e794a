//! The guest's whole path from one uploaded `image/gif` to the model input, on arbitrary bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use motion_guest_sdk::decode::Media;

fuzz_target!(|data: &[u8]| motion_host_fuzz::prepare_checked(&[Media { content_type: "image/gif", data }]));
