//! What the host knows of media formats, in one place: how to recognise one from its first
//! bytes, for requests that carry no media type (the Open Inference Protocol's BYTES tensors).
//! Decoding is the guest's, and a guest's `info()` says which types it accepts.

/// The formats recognised: their first bytes, media type and short name.
const FORMATS: &[(&[u8], &str, &str)] = &[
    (b"GIF87a", "image/gif", "GIF"),
    (b"GIF89a", "image/gif", "GIF"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    (b"\xff\xd8\xff", "image/jpeg", "JPEG"),
    (b"YUV4MPEG2 ", "video/x-yuv4mpeg", "Y4M"),
];

/// The media type of an encoded file, from its first bytes.
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    FORMATS.iter().find(|(magic, _, _)| data.starts_with(magic)).map(|(_, kind, _)| *kind)
}

/// The formats [`sniff`] recognises, for messages: "GIF, PNG, JPEG or Y4M".
pub fn recognised() -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, _, name) in FORMATS {
        if !names.contains(name) {
            names.push(name);
        }
    }
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_sniffed_from_their_first_bytes() {
        assert_eq!(sniff(b"GIF89a\x01\x00"), Some("image/gif"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(sniff(b"YUV4MPEG2 W8 H8"), Some("video/x-yuv4mpeg"));
        assert_eq!(sniff(b"RIFF....WEBP"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(recognised(), "GIF, PNG, JPEG or Y4M");
    }
}
