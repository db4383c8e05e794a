//! What the host knows of media formats, in one place: how to recognise one from its first
//! bytes, for requests that carry no media type (the Open Inference Protocol's BYTES tensors),
//! and how to make a sample clip of it, which validation sends through a guest as traffic
//! would. Decoding is the guest's, and a guest's `info()` says which types it accepts.

use std::sync::{Arc, Mutex, Weak};

/// A format the host recognises: its first bytes, media type, short name and sample.
struct Format {
    magic: &'static [&'static [u8]],
    media_type: &'static str,
    name: &'static str,
    /// The sample's media, from the sample clip's frames.
    encode: fn(&Frames) -> Vec<Vec<u8>>,
    /// The sample while a validation holds it: tens of MiB, made again for a later validation
    /// rather than kept for the life of the server.
    sample: Mutex<Weak<Sample>>,
}

static FORMATS: [Format; 4] = [
    Format {
        magic: &[b"GIF87a", b"GIF89a"],
        media_type: "image/gif",
        name: "GIF",
        encode: gif,
        sample: Mutex::new(Weak::new()),
    },
    Format {
        magic: &[b"\x89PNG\r\n\x1a\n"],
        media_type: "image/png",
        name: "PNG",
        encode: png_frames,
        sample: Mutex::new(Weak::new()),
    },
    Format {
        magic: &[b"\xff\xd8\xff"],
        media_type: "image/jpeg",
        name: "JPEG",
        encode: jpeg_frames,
        sample: Mutex::new(Weak::new()),
    },
    Format {
        magic: &[b"YUV4MPEG2 "],
        media_type: "video/x-yuv4mpeg",
        name: "Y4M",
        encode: y4m,
        sample: Mutex::new(Weak::new()),
    },
];

/// The media type of an encoded file, from its first bytes.
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    FORMATS.iter().find(|f| f.magic.iter().any(|m| data.starts_with(m))).map(|f| f.media_type)
}

/// The formats [`sniff`] recognises, for messages: "GIF, PNG, JPEG or Y4M".
pub fn recognised() -> String {
    let names: Vec<&str> = FORMATS.iter().map(|f| f.name).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The smallest sample validation sends: a guest must handle an upload of this size, which is
/// larger than the benchmark's clip (16 frames of 320×180, 1.4 MB as Y4M) and large enough to
/// take every allocator past its small-allocation paths when the host copies it in.
pub const SAMPLE_MIN_BYTES: usize = 8 << 20;

/// A sample clip in one format, as a client would upload it: a camera panning over a detailed
/// scene, 1280×720, in as many frames as make [`SAMPLE_MIN_BYTES`] in that format.
pub struct Sample {
    pub media_type: &'static str,
    /// The media: one whole clip (GIF, Y4M) or one part per frame (PNG, JPEG).
    pub parts: Vec<Vec<u8>>,
    pub frames: usize,
    pub width: u32,
    pub height: u32,
}

impl Sample {
    /// Bytes in all its parts.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }
}

/// The sample for a media type (made in a fraction of a second, and shared while it is held);
/// `None` when the host has no sample of that type.
pub fn sample(media_type: &str) -> Option<Arc<Sample>> {
    let format = FORMATS.iter().find(|f| f.media_type.eq_ignore_ascii_case(media_type))?;
    let mut held = format.sample.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(sample) = held.upgrade() {
        return Some(sample);
    }
    let sample = Arc::new(make_sample(format));
    *held = Arc::downgrade(&sample);
    Some(sample)
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
/// How far the scene moves between frames, in pixels.
const PAN: u32 = 8;
/// No sample needs more frames: every format reaches the size in fewer.
const MAX_FRAMES: usize = 64;

/// RGB frames of the sample clip, made as they are needed.
struct Frames {
    count: usize,
}

impl Frames {
    /// Frame `t`: the scene moved `t·PAN` pixels right, as when the camera pans left. The scene is
    /// a hash of its coordinates: detail at every scale, so no format compresses it much.
    fn rgb(&self, t: usize) -> Vec<u8> {
        let shift = t as u32 * PAN;
        let mut out = Vec::with_capacity((WIDTH * HEIGHT * 3) as usize);
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                let h = scene(x.wrapping_sub(shift), y);
                out.extend_from_slice(&[h as u8, (h >> 8) as u8, (h >> 16) as u8]);
            }
        }
        out
    }

    fn luma(&self, t: usize) -> Vec<u8> {
        self.rgb(t)
            .chunks_exact(3)
            .map(|p| ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2])) / 1000) as u8)
            .collect()
    }
}

/// A deterministic hash of a scene point (a 32-bit mix of its coordinates).
fn scene(x: u32, y: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h
}

/// Encodes as few frames as reach [`SAMPLE_MIN_BYTES`]: one frame gives the size of a frame,
/// and the count follows from it (with one to spare, since frames differ a little).
fn make_sample(format: &Format) -> Sample {
    let mut count = 1;
    loop {
        let parts = (format.encode)(&Frames { count });
        let bytes: usize = parts.iter().map(Vec::len).sum();
        if bytes >= SAMPLE_MIN_BYTES || count >= MAX_FRAMES {
            return Sample {
                media_type: format.media_type,
                parts,
                frames: count,
                width: WIDTH,
                height: HEIGHT,
            };
        }
        let per_frame = (bytes / count).max(1);
        count = (SAMPLE_MIN_BYTES.div_ceil(per_frame) + 1).clamp(count + 1, MAX_FRAMES);
    }
}

/// One PNG file per frame, RGB, 8 bits.
fn png_frames(frames: &Frames) -> Vec<Vec<u8>> {
    (0..frames.count)
        .map(|t| {
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            // Writing into a Vec cannot fail but for a size mismatch, which the dimensions rule out.
            if let Ok(mut writer) = encoder.write_header() {
                let _ = writer.write_image_data(&frames.rgb(t));
            }
            out
        })
        .collect()
}

/// One baseline JPEG file per frame, RGB (stored as YCbCr 4:2:0), quality 90.
fn jpeg_frames(frames: &Frames) -> Vec<Vec<u8>> {
    use image::ImageEncoder;
    (0..frames.count)
        .map(|t| {
            let mut out = Vec::new();
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            let _ = encoder.write_image(&frames.rgb(t), WIDTH, HEIGHT, image::ExtendedColorType::Rgb8);
            out
        })
        .collect()
}

/// One animated GIF: a grey palette, each frame whole, 40 ms apart.
fn gif(frames: &Frames) -> Vec<Vec<u8>> {
    let palette: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let mut out = Vec::new();
    if let Ok(mut encoder) = ::gif::Encoder::new(&mut out, WIDTH as u16, HEIGHT as u16, &palette) {
        for t in 0..frames.count {
            let mut frame = ::gif::Frame::<'_> {
                width: WIDTH as u16,
                height: HEIGHT as u16,
                delay: 4,
                buffer: frames.luma(t).into(),
                ..Default::default()
            };
            frame.make_lzw_pre_encoded();
            let _ = encoder.write_lzw_pre_encoded_frame(&frame);
        }
    }
    vec![out]
}

/// One Y4M stream, 4:2:0 with neutral chroma, 25 frames a second.
fn y4m(frames: &Frames) -> Vec<Vec<u8>> {
    let chroma = (WIDTH / 2 * (HEIGHT / 2)) as usize;
    let mut out = format!("YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 Ip A1:1 C420jpeg\n").into_bytes();
    for t in 0..frames.count {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&frames.luma(t));
        out.resize(out.len() + 2 * chroma, 128);
    }
    vec![out]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_sniffed_from_their_first_bytes() {
        assert_eq!(sniff(b"GIF89a\x01\x00"), Some("image/gif"));
        assert_eq!(sniff(b"GIF87a\x01\x00"), Some("image/gif"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(sniff(b"YUV4MPEG2 W8 H8"), Some("video/x-yuv4mpeg"));
        assert_eq!(sniff(b"RIFF....WEBP"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(recognised(), "GIF, PNG, JPEG or Y4M");
    }

    #[test]
    fn every_format_has_a_sample_of_at_least_the_minimum_size_that_sniffs_as_itself() {
        for format in &FORMATS {
            let started = std::time::Instant::now();
            let sample = sample(format.media_type).unwrap();
            let bytes = sample.bytes();
            eprintln!(
                "{}: {} parts, {} frames, {bytes} bytes in {:?}",
                format.name,
                sample.parts.len(),
                sample.frames,
                started.elapsed()
            );
            assert!(bytes >= SAMPLE_MIN_BYTES, "{}: {bytes} bytes", format.name);
            assert!(sample.parts.iter().all(|p| sniff(p) == Some(format.media_type)), "{}", format.name);
        }
        assert!(sample("video/mp4").is_none());
        assert_eq!(sample("IMAGE/PNG").unwrap().media_type, "image/png");
    }
}
