//! What the host knows of media formats, in one place: how to recognise one from its first
//! bytes, for requests that carry no media type (the Open Inference Protocol's BYTES tensors),
//! and how to make a sample upload of each type, which validation sends through a guest as a
//! request would. Decoding is the guest's, and a guest's `info()` says which types it accepts.

use std::sync::{Arc, Mutex, Weak};

/// The formats recognised: their first bytes, media type and short name.
const FORMATS: &[(&[u8], &str, &str)] = &[
    (b"GIF87a", "image/gif", "GIF"),
    (b"GIF89a", "image/gif", "GIF"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    (b"\xff\xd8\xff", "image/jpeg", "JPEG"),
    (b"YUV4MPEG2 ", "video/x-yuv4mpeg", "Y4M"),
];

/// The media type of an encoded file, from its first bytes. An ISO-BMFF file starts with its
/// `ftyp` box, whose major brand tells QuickTime from MP4.
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    if data.get(4..8) == Some(b"ftyp") {
        return Some(if data.get(8..12) == Some(b"qt  ") { "video/quicktime" } else { "video/mp4" });
    }
    FORMATS.iter().find(|(magic, _, _)| data.starts_with(magic)).map(|(_, kind, _)| *kind)
}

/// The formats [`sniff`] recognises, for messages: "GIF, PNG, JPEG, Y4M or MP4".
pub fn recognised() -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, _, name) in FORMATS {
        if !names.contains(name) {
            names.push(name);
        }
    }
    // ISO-BMFF is told by its `ftyp` box, four bytes in, not by a prefix.
    names.push("MP4");
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

/// A sample upload of one media type, as a client would send it: a camera panning over a
/// detailed scene (detail at every scale, so no format compresses it much), at least
/// [`SAMPLE_MIN_BYTES`] in all.
pub struct Sample {
    /// The type the upload is sent as.
    pub media_type: &'static str,
    /// The media the guest receives: the whole body, or one part per frame for
    /// `multipart/form-data`, each with its own type.
    pub parts: Vec<(&'static str, Vec<u8>)>,
    pub frames: usize,
    pub width: u32,
    pub height: u32,
}

impl Sample {
    /// Bytes in all its parts.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|(_, data)| data.len()).sum()
    }
}

/// How the sample of a media type is made: frames of a size, and how they are sent.
struct Recipe {
    media_type: &'static str,
    width: u32,
    height: u32,
    frames: usize,
    make: fn(&Recipe) -> Result<Vec<(&'static str, Vec<u8>)>, String>,
}

/// One sample per media type the host can make. Sizes are chosen for at least
/// [`SAMPLE_MIN_BYTES`] in each format (a unit test holds it): a still is one large frame, as a
/// single upload carries one; clips and multipart uploads are frames of 1280×720. The MP4 and
/// QuickTime samples are libx264's H.264 (see `samples/make.sh`) with space reserved after it.
const RECIPES: [Recipe; 7] = [
    Recipe { media_type: "image/png", width: 2048, height: 1536, frames: 1, make: png_parts },
    Recipe { media_type: "image/jpeg", width: 2560, height: 1920, frames: 1, make: jpeg_parts },
    Recipe { media_type: "image/gif", width: 1280, height: 720, frames: 8, make: gif },
    Recipe { media_type: "video/x-yuv4mpeg", width: 1280, height: 720, frames: 8, make: y4m },
    Recipe { media_type: "multipart/form-data", width: 1280, height: 720, frames: 4, make: png_parts },
    Recipe { media_type: "video/mp4", width: 640, height: 360, frames: 16, make: iso_bmff },
    Recipe { media_type: "video/quicktime", width: 640, height: 360, frames: 16, make: iso_bmff },
];

/// Each sample while a validation holds it: tens of MiB, made again for a later validation
/// rather than kept for the life of the server.
static HELD: [Mutex<Weak<Sample>>; RECIPES.len()] = [const { Mutex::new(Weak::new()) }; RECIPES.len()];

/// The media types the host has a sample of, for messages.
pub fn sampled_types() -> Vec<&'static str> {
    RECIPES.iter().map(|r| r.media_type).collect()
}

/// The sample upload of a media type (made in a fraction of a second, and shared while it is
/// held); `Ok(None)` when the host has no sample of that type, `Err` when it could not make one.
pub fn sample(media_type: &str) -> Result<Option<Arc<Sample>>, String> {
    let Some(index) = RECIPES.iter().position(|r| r.media_type.eq_ignore_ascii_case(media_type)) else {
        return Ok(None);
    };
    let recipe = &RECIPES[index];
    let mut held = HELD[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(sample) = held.upgrade() {
        return Ok(Some(sample));
    }
    let parts = (recipe.make)(recipe)
        .map_err(|e| format!("the host could not make its {} sample: {e}", recipe.media_type))?;
    let sample = Arc::new(Sample {
        media_type: recipe.media_type,
        parts,
        frames: recipe.frames,
        width: recipe.width,
        height: recipe.height,
    });
    *held = Arc::downgrade(&sample);
    Ok(Some(sample))
}

/// How far the scene moves between frames, in pixels.
const PAN: u32 = 8;

/// Frame `t` of a recipe, RGB: the scene moved `t·PAN` pixels right, as when the camera pans
/// left. The scene is a hash of its coordinates.
fn rgb(recipe: &Recipe, t: usize) -> Vec<u8> {
    let shift = t as u32 * PAN;
    let mut out = Vec::with_capacity((recipe.width * recipe.height * 3) as usize);
    for y in 0..recipe.height {
        for x in 0..recipe.width {
            let h = scene(x.wrapping_sub(shift), y);
            out.extend_from_slice(&[h as u8, (h >> 8) as u8, (h >> 16) as u8]);
        }
    }
    out
}

/// Frame `t` of a recipe as BT.601 luma.
fn luma(recipe: &Recipe, t: usize) -> Vec<u8> {
    rgb(recipe, t)
        .chunks_exact(3)
        .map(|p| ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2])) / 1000) as u8)
        .collect()
}

/// A deterministic hash of a scene point (a 32-bit mix of its coordinates).
fn scene(x: u32, y: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h
}

/// One PNG file per frame, RGB, 8 bits.
fn png_parts(recipe: &Recipe) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    (0..recipe.frames)
        .map(|t| {
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, recipe.width, recipe.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
            writer.write_image_data(&rgb(recipe, t)).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
            Ok(("image/png", out))
        })
        .collect()
}

/// One baseline JPEG file per frame, RGB (stored as YCbCr 4:2:0), quality 90.
fn jpeg_parts(recipe: &Recipe) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    use image::ImageEncoder;
    (0..recipe.frames)
        .map(|t| {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .write_image(&rgb(recipe, t), recipe.width, recipe.height, image::ExtendedColorType::Rgb8)
                .map_err(|e| e.to_string())?;
            Ok(("image/jpeg", out))
        })
        .collect()
}

/// One animated GIF: a grey palette, each frame whole, 40 ms apart.
fn gif(recipe: &Recipe) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    let palette: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let (width, height) = (recipe.width as u16, recipe.height as u16);
    let mut out = Vec::new();
    {
        let mut encoder =
            ::gif::Encoder::new(&mut out, width, height, &palette).map_err(|e| e.to_string())?;
        for t in 0..recipe.frames {
            let mut frame = ::gif::Frame::<'_> {
                width,
                height,
                delay: 4,
                buffer: luma(recipe, t).into(),
                ..Default::default()
            };
            frame.make_lzw_pre_encoded();
            encoder.write_lzw_pre_encoded_frame(&frame).map_err(|e| e.to_string())?;
        }
    }
    Ok(vec![("image/gif", out)])
}

/// One Y4M stream, 4:2:0 with neutral chroma, 25 frames a second.
fn y4m(recipe: &Recipe) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    let (width, height) = (recipe.width, recipe.height);
    let chroma = (width / 2 * (height / 2)) as usize;
    let mut out = format!("YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n").into_bytes();
    for t in 0..recipe.frames {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&luma(recipe, t));
        out.resize(out.len() + 2 * chroma, 128);
    }
    Ok(vec![("video/x-yuv4mpeg", out)])
}

/// An H.264 file made by ffmpeg (`samples/make.sh`), with a `free` box after its last box that
/// takes it to [`SAMPLE_MIN_BYTES`]: the space a muxer reserves (ffmpeg's `-moov_size`), which
/// a reader skips. Encoding that much H.264 here would take seconds for every validation.
fn iso_bmff(recipe: &Recipe) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    let coded: &[u8] = match recipe.media_type {
        "video/quicktime" => include_bytes!("../samples/pan.mov"),
        _ => include_bytes!("../samples/pan.mp4"),
    };
    let mut out = coded.to_vec();
    let free = SAMPLE_MIN_BYTES.saturating_sub(out.len()).max(8);
    out.extend_from_slice(&u32::try_from(free).map_err(|e| e.to_string())?.to_be_bytes());
    out.extend_from_slice(b"free");
    out.resize(out.len() + free - 8, 0);
    Ok(vec![(recipe.media_type, out)])
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
        assert_eq!(sniff(b"\0\0\0\x20ftypisom"), Some("video/mp4"));
        assert_eq!(sniff(b"\0\0\0\x14ftypqt  "), Some("video/quicktime"));
        assert_eq!(sniff(b"RIFF....WEBP"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(recognised(), "GIF, PNG, JPEG, Y4M or MP4");
    }

    #[test]
    fn every_sample_is_at_least_the_minimum_size_and_each_part_is_what_it_says() {
        for media_type in sampled_types() {
            let started = std::time::Instant::now();
            let sample = sample(media_type).unwrap().unwrap();
            let bytes = sample.bytes();
            eprintln!("{media_type}: {} parts, {bytes} bytes in {:?}", sample.parts.len(), started.elapsed());
            assert!(bytes >= SAMPLE_MIN_BYTES, "{media_type}: {bytes} bytes");
            for (part_type, data) in &sample.parts {
                assert_eq!(sniff(data), Some(*part_type), "{media_type}");
            }
            // A single upload of a type is one file of it; only multipart carries several.
            if media_type == "multipart/form-data" {
                assert_eq!(sample.parts.len(), sample.frames, "{media_type}");
            } else {
                assert_eq!(sample.parts.len(), 1, "{media_type}");
                assert_eq!(sample.parts[0].0, media_type);
            }
        }
        assert!(sample("video/webm").unwrap().is_none());
        assert_eq!(sample("IMAGE/PNG").unwrap().unwrap().media_type, "image/png");
    }
}
