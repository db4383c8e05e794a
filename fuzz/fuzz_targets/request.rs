//! The host's request parsing on arbitrary input: the first line is the declared
//! `Content-Type`, the second the raw `top_k`, the rest the body. Every part it returns must
//! lie within the body, and the guest's decoders must take whatever it returns.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use motion_guest_sdk::decode::Media;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let content_type = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let top_k = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let body = Bytes::copy_from_slice(lines.next().unwrap_or_default());

    if let Ok(k) = motion_request::top_k(Some(&top_k), 16, 3) {
        assert!((1..=16).contains(&k));
    }
    let Ok(parts) = motion_request::media(&content_type, body.clone()) else { return };
    assert!(!parts.is_empty());
    assert!(parts.iter().map(|p| p.data.len()).sum::<usize>() <= body.len());
    let media: Vec<Media> =
        parts.iter().map(|p| Media { content_type: &p.content_type, data: &p.data }).collect();
    motion_host_fuzz::prepare_checked(&media);
});
