//! Decoders: uploaded media to luma [`Frame`]s.
//!
//! A clip is either one media that holds every frame (an animated GIF, a Y4M stream, an MP4 or
//! QuickTime file with H.264 video) or one or more still images (PNG or JPEG), one frame each, in time order. Each decoder reads the
//! declared size from the header and refuses it against [`Limits`] before allocating, so a
//! hostile header cannot exhaust the guest's memory. Only the sampled frames are decoded to
//! pixels; the others are only counted.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::preprocess::{Frame, luma};
use crate::timeline::Timing;
pub use crate::video::Mp4;

/// The media types these decoders read (and the default guest accepts).
pub const ACCEPTS: [&str; 7] = [
    "multipart/form-data",
    "image/png",
    "image/jpeg",
    "image/gif",
    "video/x-yuv4mpeg",
    "video/mp4",
    "video/quicktime",
];

/// Bounds on what a clip may declare, checked before anything is allocated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Widest and tallest frame.
    pub max_side: u32,
    /// Most pixels in one frame.
    pub max_pixels: u64,
    /// Most frames in one clip.
    pub max_frames: usize,
    /// Most pixels decoded from one GIF, summed over the frames up to the last one used. Each
    /// GIF frame is a patch drawn over the ones before it, so showing frame N means decoding
    /// every frame up to N.
    pub max_gif_pixels: u64,
    /// Most pixels decoded from one MP4: showing a frame means decoding from the keyframe before
    /// it, so a long distance between keyframes costs many pictures for one frame, and a
    /// timeline samples frames all along the clip.
    pub max_video_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // 4096×4096 luma as f32 plus its RGBA source is ~130 MiB, within the host's default
        // 256 MiB guest memory.
        // 16 full 4096×4096 frames, or 128 full 1080p frames, or 1,000 of 480×270: a few
        // seconds of decoding in wasm at most.
        Limits {
            max_side: 8192,
            max_pixels: 4096 * 4096,
            max_frames: 100_000,
            max_gif_pixels: 16 * 4096 * 4096,
            // Every frame of a minute of 640×360 at 30 frames a second (a timeline of a clip
            // whose keyframes are far apart decodes them all), or of 9 s of 1080p.
            max_video_pixels: 32 * 4096 * 4096,
        }
    }
}

/// Why media could not become frames.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The media type is not one these decoders read.
    Unsupported(String),
    /// The media is malformed, empty or over the limits.
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Unsupported(m) | DecodeError::Malformed(m) => f.write_str(m),
        }
    }
}

/// One uploaded piece of media.
#[derive(Debug, Clone, Copy)]
pub struct Media<'a> {
    pub content_type: &'a str,
    pub data: &'a [u8],
}

/// A clip whose frames can be counted and decoded by number.
#[derive(Debug)]
pub enum Clip<'a> {
    /// Still images, one frame each.
    Stills(Vec<(Still, &'a [u8])>),
    /// An animated GIF, its frame count, and each frame's delay in hundredths of a second.
    Gif { data: &'a [u8], delays: Vec<u16> },
    /// A Y4M stream.
    Y4m(Y4m<'a>),
    /// An MP4 or QuickTime file's H.264 video track.
    Mp4(Box<Mp4<'a>>),
}

/// The still-image formats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Still {
    Png,
    Jpeg,
}

impl Still {
    fn format(self) -> ImageFormat {
        match self {
            Still::Png => ImageFormat::Png,
            Still::Jpeg => ImageFormat::Jpeg,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Still::Png => "PNG",
            Still::Jpeg => "JPEG",
        }
    }
}

/// What a declared content type means to this guest. `application/octet-stream` (and an empty
/// type) is resolved by the data's magic bytes.
fn kind_of(media: &Media) -> Result<Kind, DecodeError> {
    let declared = media.content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = match declared.as_str() {
        "image/png" => Some(Kind::Still(Still::Png)),
        "image/jpeg" | "image/jpg" => Some(Kind::Still(Still::Jpeg)),
        "image/gif" => Some(Kind::Gif),
        "video/x-yuv4mpeg" | "video/yuv4mpeg" => Some(Kind::Y4m),
        "video/mp4" | "video/quicktime" => Some(Kind::Mp4),
        "" | "application/octet-stream" => sniff(media.data),
        _ => None,
    };
    kind.ok_or_else(|| {
        DecodeError::Unsupported(format!(
            "media type '{declared}' is not supported; accepted: {}",
            ACCEPTS.join(", ")
        ))
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Still(Still),
    Gif,
    Y4m,
    Mp4,
}

fn sniff(data: &[u8]) -> Option<Kind> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Kind::Still(Still::Png))
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Kind::Still(Still::Jpeg))
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some(Kind::Gif)
    } else if data.starts_with(b"YUV4MPEG2 ") {
        Some(Kind::Y4m)
    } else if crate::video::sniff(data) {
        Some(Kind::Mp4)
    } else {
        None
    }
}

impl<'a> Clip<'a> {
    /// Reads the headers of `media` and checks them against `limits`; decodes no pixels.
    pub fn open(media: &[Media<'a>], limits: &Limits) -> Result<Clip<'a>, DecodeError> {
        let kinds = media.iter().map(kind_of).collect::<Result<Vec<_>, _>>()?;
        match (media, kinds.as_slice()) {
            ([], _) => Err(DecodeError::Malformed("the request holds no media".into())),
            ([one], [Kind::Gif]) => {
                let delays = gif_delays(one.data, limits)?;
                Ok(Clip::Gif { data: one.data, delays })
            }
            ([one], [Kind::Y4m]) => Ok(Clip::Y4m(Y4m::parse(one.data, limits)?)),
            ([one], [Kind::Mp4]) => Ok(Clip::Mp4(Box::new(Mp4::parse(one.data, limits)?))),
            _ => {
                if media.len() > limits.max_frames {
                    return Err(DecodeError::Malformed(format!(
                        "the clip has {} frames; the limit is {}",
                        media.len(),
                        limits.max_frames
                    )));
                }
                let mut stills = Vec::with_capacity(media.len());
                for (i, (m, kind)) in media.iter().zip(&kinds).enumerate() {
                    match kind {
                        Kind::Still(still) => {
                            check_still_header(*still, m.data, limits)
                                .map_err(|e| prefix_part(e, i, media.len()))?;
                            stills.push((*still, m.data));
                        }
                        _ => {
                            return Err(DecodeError::Unsupported(format!(
                                "part {} is a video clip; a clip sent as several parts takes one \
                                 PNG or JPEG frame per part",
                                i + 1
                            )));
                        }
                    }
                }
                Ok(Clip::Stills(stills))
            }
        }
    }

    /// Frames in the clip.
    pub fn frame_count(&self) -> usize {
        match self {
            Clip::Stills(stills) => stills.len(),
            Clip::Gif { delays, .. } => delays.len(),
            Clip::Y4m(y4m) => y4m.frames.len(),
            Clip::Mp4(mp4) => mp4.frame_count(),
        }
    }

    /// When each frame is shown, for timed media: an MP4, a Y4M stream with a frame rate, a GIF
    /// with frame delays. Still frames have no times.
    pub fn timing(&self) -> Option<Timing> {
        match self {
            Clip::Stills(_) => None,
            Clip::Gif { delays, .. } => {
                let mut t = 0u32;
                let starts = delays.iter().map(|&d| {
                    let start = t;
                    t += u32::from(d);
                    f64::from(start) / 100.0
                });
                let starts: Vec<f64> = starts.collect();
                (t > 0).then(|| Timing { starts, end: f64::from(t) / 100.0 })
            }
            Clip::Y4m(y4m) => {
                let (num, den) = y4m.rate?;
                let fps = f64::from(num) / f64::from(den);
                let n = y4m.frames.len();
                Some(Timing { starts: (0..n).map(|i| i as f64 / fps).collect(), end: n as f64 / fps })
            }
            Clip::Mp4(mp4) => Some(Timing { starts: mp4.times().to_vec(), end: mp4.duration() }),
        }
    }

    /// Decodes the frames numbered `wanted` (ascending, distinct), returning each with its number.
    pub fn decode(&self, wanted: &[usize], limits: &Limits) -> Result<Vec<(usize, Frame)>, DecodeError> {
        let mut frames = Vec::with_capacity(wanted.len());
        self.decode_each(wanted, limits, |index, frame| frames.push((index, frame)))?;
        Ok(frames)
    }

    /// Decodes the frames numbered `wanted` (ascending, distinct) and hands each to `each` with
    /// its number as soon as it is decoded: in time order, except in an MP4 whose frames are
    /// stored out of display order (B-frames), where it is the order they decode in.
    pub fn decode_each(
        &self,
        wanted: &[usize],
        limits: &Limits,
        mut each: impl FnMut(usize, Frame),
    ) -> Result<(), DecodeError> {
        match self {
            Clip::Stills(stills) => {
                for &i in wanted {
                    let (still, data) = stills.get(i).ok_or_else(|| no_frame(i, stills.len()))?;
                    each(i, decode_still(*still, data, limits).map_err(|e| prefix_part(e, i, stills.len()))?);
                }
                Ok(())
            }
            Clip::Gif { data, .. } => decode_gif(data, wanted, limits, each),
            Clip::Y4m(y4m) => {
                for &i in wanted {
                    each(i, y4m.frame(i)?);
                }
                Ok(())
            }
            Clip::Mp4(mp4) => mp4.decode_each(wanted, limits, each),
        }
    }
}

fn no_frame(i: usize, n: usize) -> DecodeError {
    DecodeError::Malformed(format!("frame {i} asked of a clip of {n} frames"))
}

fn prefix_part(e: DecodeError, i: usize, n: usize) -> DecodeError {
    if n == 1 {
        return e;
    }
    match e {
        DecodeError::Malformed(m) => DecodeError::Malformed(format!("part {}: {m}", i + 1)),
        DecodeError::Unsupported(m) => DecodeError::Unsupported(format!("part {}: {m}", i + 1)),
    }
}

pub(crate) fn check_size(width: u32, height: u32, limits: &Limits) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::Malformed(format!("frame size {width}x{height} is empty")));
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(DecodeError::Malformed(format!(
            "frame size {width}x{height} exceeds the limit of {0}x{0}",
            limits.max_side
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::Malformed(format!(
            "frame size {width}x{height} exceeds the limit of {} pixels",
            limits.max_pixels
        )));
    }
    Ok(())
}

fn image_error(format: &str, e: image::ImageError) -> DecodeError {
    DecodeError::Malformed(format!("{format} does not decode: {e}"))
}

fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    // RGBA at 16 bits per channel is the widest buffer a decoder allocates.
    l.max_alloc = Some(limits.max_pixels * 8);
    l
}

fn check_still_header(still: Still, data: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if still == Still::Png {
        // The IHDR chunk alone, which must come first: nothing of the image's size is read or
        // allocated, and a size too large for the decoder is named rather than refused as a
        // memory limit (on wasm32, any image over 4 GiB of pixels).
        let mut decoder = png::Decoder::new(Cursor::new(data));
        let header = decoder.read_header_info().map_err(png_error)?;
        return check_size(header.width, header.height, limits);
    }
    let mut reader = ImageReader::with_format(Cursor::new(data), still.format());
    // Reading the header allocates nothing of the image's size; our own limits come next.
    reader.no_limits();
    let (w, h) = reader.into_dimensions().map_err(|e| image_error(still.name(), e))?;
    check_size(w, h, limits)
}

fn decode_still(still: Still, data: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
    if still == Still::Png {
        return decode_png(data, limits);
    }
    check_still_header(still, data, limits)?;
    let mut reader = ImageReader::with_format(Cursor::new(data), still.format());
    reader.limits(image_limits(limits));
    let image = reader.decode().map_err(|e| image_error(still.name(), e))?;
    Ok(to_luma(image))
}

/// Decodes a PNG with the `png` crate itself rather than through `image`, for one setting
/// `image` does not offer: the chunks' CRC-32s are not checked. The png crate already skips
/// zlib's Adler-32 by default, and for the same reason: a checksum guards against storage
/// damage, which the upload's transport already rules out, and a damaged stream still fails
/// to decode. In wasm there is no carry-less multiply to compute it with, and checking it took
/// 6 % of a PNG request's CPU in the default guest (next to nothing natively). The output is
/// what `image` gives: palettes and depths below 8 bits expanded to 8, 16-bit samples kept.
fn decode_png(data: &[u8], limits: &Limits) -> Result<Frame, DecodeError> {
    let max_bytes = usize::try_from(limits.max_pixels * 8).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(data), png::Limits { bytes: max_bytes });
    decoder.ignore_checksums(true);
    decoder.set_transformations(png::Transformations::EXPAND);
    let header = decoder.read_header_info().map_err(png_error)?;
    check_size(header.width, header.height, limits)?;
    let mut reader = decoder.read_info().map_err(png_error)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DecodeError::Malformed("the PNG's decoded size does not fit in memory".into()))?;
    let mut buffer = vec![0u8; size];
    let info = reader.next_frame(&mut buffer).map_err(png_error)?;
    let (width, height) = (info.width, info.height);
    let samples = &buffer[..info.buffer_size()];
    let wide =
        |raw: &[u8]| -> Vec<u16> { raw.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect() };
    let channels = info.color_type.samples();
    let luma = match (info.color_type, info.bit_depth) {
        (png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => {
            samples.iter().step_by(channels).map(|&v| f32::from(v) / 255.0).collect()
        }
        (png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha, png::BitDepth::Sixteen) => {
            wide(samples).into_iter().step_by(channels).map(|v| f32::from(v) / 65535.0).collect()
        }
        (png::ColorType::Rgb | png::ColorType::Rgba, png::BitDepth::Eight) => rgb8_luma(samples, channels),
        (png::ColorType::Rgb | png::ColorType::Rgba, png::BitDepth::Sixteen) => {
            rgb16_luma(&wide(samples), channels)
        }
        (color, depth) => {
            return Err(DecodeError::Malformed(format!(
                "PNG of {color:?} at {depth:?} bits does not decode to 8 or 16 bits a sample"
            )));
        }
    };
    Ok(Frame::new(width, height, luma))
}

fn png_error(e: png::DecodingError) -> DecodeError {
    DecodeError::Malformed(format!("PNG does not decode: {e}"))
}

/// Converts any decoded image to BT.601 luma in [0, 1]; a grey image is used as is, and alpha
/// is ignored.
pub fn to_luma(image: DynamicImage) -> Frame {
    let (width, height) = (image.width(), image.height());
    let luma = match image {
        DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect(),
        DynamicImage::ImageLumaA8(b) => {
            b.into_raw().chunks_exact(2).map(|p| f32::from(p[0]) / 255.0).collect()
        }
        DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().map(|v| f32::from(v) / 65535.0).collect(),
        DynamicImage::ImageLumaA16(b) => {
            b.into_raw().chunks_exact(2).map(|p| f32::from(p[0]) / 65535.0).collect()
        }
        DynamicImage::ImageRgb8(b) => rgb8_luma(b.as_raw(), 3),
        DynamicImage::ImageRgba8(b) => rgb8_luma(b.as_raw(), 4),
        DynamicImage::ImageRgb16(b) => rgb16_luma(b.as_raw(), 3),
        DynamicImage::ImageRgba16(b) => rgb16_luma(b.as_raw(), 4),
        other => rgb8_luma(other.into_rgb8().as_raw(), 3),
    };
    Frame::new(width, height, luma)
}

/// BT.601 luma in [0, 1] of 8-bit RGB (`channels` 3) or RGBA (4) pixels.
fn rgb8_luma(raw: &[u8], channels: usize) -> Vec<f32> {
    let pixels = raw.len() / channels;
    let mut out = Vec::with_capacity(pixels);
    let done = rgb8_luma_vectors(raw, channels, &mut out.spare_capacity_mut()[..pixels]);
    for (slot, p) in
        out.spare_capacity_mut()[done..pixels].iter_mut().zip(raw[done * channels..].chunks_exact(channels))
    {
        slot.write(luma(f32::from(p[0]), f32::from(p[1]), f32::from(p[2])) / 255.0);
    }
    // SAFETY: the vectors wrote the first `done` values and the loop above the rest.
    unsafe { out.set_len(pixels) };
    out
}

/// [`rgb8_luma`] with wasm SIMD, the same arithmetic in the same order (so the same bits);
/// returns how many pixels it wrote, leaving the last few to the caller. LLVM does not
/// vectorise the plain loop's three-byte stride for wasm: in the default guest it took 13 % of
/// a PNG request's CPU (a tenth of that natively), about 1 ms of the benchmark's clip.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn rgb8_luma_vectors(raw: &[u8], channels: usize, out: &mut [std::mem::MaybeUninit<f32>]) -> usize {
    match channels {
        3 => luma_vectors::<3>(raw, out),
        4 => luma_vectors::<4>(raw, out),
        _ => 0,
    }
}

/// Four pixels a vector, four vectors an iteration (so the loop's branch, its bounds checks and
/// the epoch check at its back edge are paid once for sixteen pixels). One unaligned load holds
/// four pixels; a swizzle per channel moves each pixel's byte into the low byte of its own
/// 32-bit lane and zeroes the rest.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn luma_vectors<const CHANNELS: usize>(raw: &[u8], out: &mut [std::mem::MaybeUninit<f32>]) -> usize {
    use core::arch::wasm32::*;
    const PIXELS: usize = 16;
    let lane = |c: usize| {
        let at = |pixel: usize| (pixel * CHANNELS + c) as u8;
        // Indices of 16 or more read as zero.
        u8x16(at(0), 16, 16, 16, at(1), 16, 16, 16, at(2), 16, 16, 16, at(3), 16, 16, 16)
    };
    let (red, green, blue) = (lane(0), lane(1), lane(2));
    let (wr, wg, wb, scale) =
        (f32x4_splat(0.299), f32x4_splat(0.587), f32x4_splat(0.114), f32x4_splat(255.0));
    // An iteration's last load reads sixteen bytes from its thirteenth pixel.
    let reads = 12 * CHANNELS + 16;
    let runs = if raw.len() < reads {
        0
    } else {
        ((raw.len() - reads) / (PIXELS * CHANNELS) + 1).min(out.len() / PIXELS)
    };
    for (run, slots) in out.chunks_exact_mut(PIXELS).take(runs).enumerate() {
        let bytes = &raw[run * PIXELS * CHANNELS..][..reads];
        for (quad, slots) in slots.chunks_exact_mut(4).enumerate() {
            let at = &bytes[quad * 4 * CHANNELS..][..16];
            // SAFETY: `at` is sixteen bytes, what a v128 load reads (unaligned is fine).
            let v = unsafe { v128_load(at.as_ptr().cast::<v128>()) };
            let channel = |mask| f32x4_convert_i32x4(i8x16_swizzle(v, mask));
            let sum = f32x4_add(
                f32x4_add(f32x4_mul(wr, channel(red)), f32x4_mul(wg, channel(green))),
                f32x4_mul(wb, channel(blue)),
            );
            // SAFETY: `slots` is four f32s, the sixteen bytes a v128 store writes.
            unsafe { v128_store(slots.as_mut_ptr().cast::<v128>(), f32x4_div(sum, scale)) };
        }
    }
    runs * PIXELS
}

/// Natively LLVM vectorises [`rgb8_luma`]'s plain loop itself.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn rgb8_luma_vectors(_raw: &[u8], _channels: usize, _out: &mut [std::mem::MaybeUninit<f32>]) -> usize {
    0
}

fn rgb16_luma(raw: &[u16], channels: usize) -> Vec<f32> {
    raw.chunks_exact(channels)
        .map(|p| luma(f32::from(p[0]), f32::from(p[1]), f32::from(p[2])) / 65535.0)
        .collect()
}

/// Each frame's delay in a GIF, read without decompressing its pixels.
fn gif_delays(data: &[u8], limits: &Limits) -> Result<Vec<u16>, DecodeError> {
    let mut options = gif::DecodeOptions::new();
    options.skip_frame_decoding(true);
    let mut decoder = options.read_info(Cursor::new(data)).map_err(|e| gif_error(&e))?;
    check_size(u32::from(decoder.width()), u32::from(decoder.height()), limits)?;
    let mut delays = Vec::new();
    while let Some(frame) = decoder.next_frame_info().map_err(|e| gif_error(&e))? {
        delays.push(frame.delay);
        if delays.len() > limits.max_frames {
            return Err(DecodeError::Malformed(format!(
                "the GIF has more than {} frames, the limit",
                limits.max_frames
            )));
        }
    }
    if delays.is_empty() {
        return Err(DecodeError::Malformed("the GIF has no frames".into()));
    }
    Ok(delays)
}

fn gif_error(e: &gif::DecodingError) -> DecodeError {
    DecodeError::Malformed(format!("GIF does not decode: {e}"))
}

/// Decodes the wanted frames of a GIF, each composited onto the full canvas as a viewer shows
/// it: a frame's opaque pixels cover the canvas within its rectangle, and its disposal method
/// says what the canvas keeps there for the next frame (its pixels, transparent black, or what
/// was there before). Work per frame is proportional to the frame's own rectangle, and the sum
/// is bounded by [`Limits::max_gif_pixels`]; only the wanted frames cost a whole canvas.
fn decode_gif(
    data: &[u8],
    wanted: &[usize],
    limits: &Limits,
    mut each: impl FnMut(usize, Frame),
) -> Result<(), DecodeError> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let frame_bytes = std::num::NonZeroU64::new(limits.max_pixels * 4).unwrap_or(std::num::NonZeroU64::MIN);
    options.set_memory_limit(gif::MemoryLimit::Bytes(frame_bytes));
    let mut decoder = options.read_info(Cursor::new(data)).map_err(|e| gif_error(&e))?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    check_size(width, height, limits)?;
    let (w, h) = (width as usize, height as usize);
    let mut canvas = vec![0u8; w * h * 4];
    let mut patch = Vec::new();
    let mut decoded = 0u64;
    let mut next = wanted.iter().copied().peekable();
    let mut index = 0;
    while let Some(&want) = next.peek() {
        let Some(info) = decoder.next_frame_info().map_err(|e| gif_error(&e))? else { break };
        let (left, top) = (usize::from(info.left), usize::from(info.top));
        let (fw, fh, dispose) = (usize::from(info.width), usize::from(info.height), info.dispose);
        decoded += (fw * fh) as u64;
        if decoded > limits.max_gif_pixels {
            return Err(DecodeError::Malformed(format!(
                "the GIF's frames up to frame {index} hold more than {} pixels, the most this guest                  decodes from one GIF (send long or large clips as Y4M or PNG frames)",
                limits.max_gif_pixels
            )));
        }
        patch.resize(decoder.buffer_size(), 0);
        decoder.read_into_buffer(&mut patch).map_err(|e| gif_error(&e))?;
        let mut shown = (index == want).then(|| canvas.clone());
        for row in 0..fh.min(h.saturating_sub(top)) {
            for col in 0..fw.min(w.saturating_sub(left)) {
                let src = (row * fw + col) * 4;
                let dst = ((top + row) * w + left + col) * 4;
                let pixel: [u8; 4] = if patch[src + 3] == 0 {
                    canvas[dst..dst + 4].try_into().expect("4 bytes")
                } else {
                    patch[src..src + 4].try_into().expect("4 bytes")
                };
                if let Some(shown) = &mut shown {
                    shown[dst..dst + 4].copy_from_slice(&pixel);
                }
                match dispose {
                    gif::DisposalMethod::Any | gif::DisposalMethod::Keep => {
                        canvas[dst..dst + 4].copy_from_slice(&pixel)
                    }
                    gif::DisposalMethod::Background => canvas[dst..dst + 4].fill(0),
                    gif::DisposalMethod::Previous => {}
                }
            }
        }
        if let Some(shown) = shown {
            each(index, Frame::new(width, height, rgb8_luma(&shown, 4)));
            next.next();
        }
        index += 1;
    }
    if let Some(missing) = next.next() {
        return Err(DecodeError::Malformed(format!("GIF ended before frame {missing}")));
    }
    Ok(())
}

/// A parsed Y4M (YUV4MPEG2) stream: where each frame's Y plane starts.
#[derive(Debug)]
pub struct Y4m<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    /// Frames a second, as a fraction, when the header states a rate.
    rate: Option<(u32, u32)>,
    frames: Vec<usize>,
}

impl<'a> Y4m<'a> {
    /// Parses the stream header and every frame header; the Y plane is used as is, with no
    /// range expansion, as the model contract says.
    pub fn parse(data: &'a [u8], limits: &Limits) -> Result<Self, DecodeError> {
        let bad = |m: String| DecodeError::Malformed(format!("Y4M: {m}"));
        let header_end = data
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no stream header line (expected 'YUV4MPEG2 W.. H.. ...')".into()))?;
        let header =
            std::str::from_utf8(&data[..header_end]).map_err(|_| bad("header is not text".into()))?;
        let mut fields = header.split(' ');
        if fields.next() != Some("YUV4MPEG2") {
            return Err(bad("stream does not start with 'YUV4MPEG2 '".into()));
        }
        let (mut width, mut height, mut colour, mut rate) = (None, None, "420jpeg", None);
        for field in fields.filter(|f| !f.is_empty()) {
            // The tag is the field's first character, which need not be ASCII.
            let mut chars = field.chars();
            let (tag, value) = (chars.next(), chars.as_str());
            match tag {
                Some('W') => {
                    width = Some(value.parse::<u32>().map_err(|_| bad(format!("bad width '{value:.32}'")))?)
                }
                Some('H') => {
                    height = Some(value.parse::<u32>().map_err(|_| bad(format!("bad height '{value:.32}'")))?)
                }
                Some('C') => colour = value,
                // A rate that does not parse, or is 0, leaves the clip untimed.
                Some('F') => {
                    rate = value
                        .split_once(':')
                        .and_then(|(n, d)| Some((n.parse::<u32>().ok()?, d.parse::<u32>().ok()?)))
                        .filter(|&(n, d)| n > 0 && d > 0)
                }
                _ => {} // interlacing, aspect, extensions: not needed to read luma
            }
        }
        let width = width.ok_or_else(|| bad("header has no width (W)".into()))?;
        let height = height.ok_or_else(|| bad("header has no height (H)".into()))?;
        check_size(width, height, limits)?;
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let frame_len = w * h
            + match colour {
                "mono" => 0,
                "420jpeg" | "420paldv" | "420mpeg2" | "420" => 2 * cw * ch,
                "422" => 2 * cw * h,
                "444" => 2 * w * h,
                "444alpha" => 3 * w * h,
                other => {
                    return Err(DecodeError::Malformed(format!(
                        "Y4M: colour space '{other}' is not supported (8-bit mono, 420, 422, 444)"
                    )));
                }
            };
        let mut frames = Vec::new();
        let mut at = header_end + 1;
        while at < data.len() {
            let rest = &data[at..];
            if !rest.starts_with(b"FRAME") {
                return Err(bad(format!("expected 'FRAME' at byte {at}")));
            }
            let line = rest
                .iter()
                .take(1024)
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad(format!("frame header at byte {at} has no end")))?;
            let start = at + line + 1;
            if data.len() - start < frame_len {
                return Err(bad(format!(
                    "frame {} is truncated: {} of {frame_len} bytes",
                    frames.len(),
                    data.len() - start
                )));
            }
            frames.push(start);
            if frames.len() > limits.max_frames {
                return Err(bad(format!("more than {} frames, the limit", limits.max_frames)));
            }
            at = start + frame_len;
        }
        if frames.is_empty() {
            return Err(bad("the stream has no frames".into()));
        }
        Ok(Y4m { data, width, height, rate, frames })
    }

    fn frame(&self, i: usize) -> Result<Frame, DecodeError> {
        let start = *self.frames.get(i).ok_or_else(|| no_frame(i, self.frames.len()))?;
        let plane = &self.data[start..start + self.width as usize * self.height as usize];
        Ok(Frame::new(self.width, self.height, plane.iter().map(|&v| f32::from(v) / 255.0).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Rgba, RgbaImage};

    fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn gif(frames: &[[u8; 3]]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut out);
            for rgb in frames {
                let img = RgbaImage::from_pixel(6, 4, Rgba([rgb[0], rgb[1], rgb[2], 255]));
                enc.encode_frame(image::Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(40, 1)))
                    .unwrap();
            }
        }
        out
    }

    fn y4m(width: usize, height: usize, colour: &str, lumas: &[u8]) -> Vec<u8> {
        let mut out = format!("YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C{colour}\n").into_bytes();
        for &y in lumas {
            out.extend_from_slice(b"FRAME\n");
            out.extend(std::iter::repeat_n(y, width * height));
            if colour != "mono" {
                out.extend(std::iter::repeat_n(128u8, 2 * width.div_ceil(2) * height.div_ceil(2)));
            }
        }
        out
    }

    /// A small, well-formed PNG whose header claims `width`×`height` RGB.
    fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        // IHDR, then the start of an image (a few bytes of IDAT) and the end marker.
        for chunk in [chunk, b"IDAT\x78\x9c\x03\x00".to_vec(), b"IEND".to_vec()] {
            png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            png.extend_from_slice(&chunk);
            png.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
        }
        png
    }

    fn media<'a>(content_type: &'a str, data: &'a [u8]) -> Media<'a> {
        Media { content_type, data }
    }

    fn open<'a>(m: &[Media<'a>]) -> Result<Clip<'a>, DecodeError> {
        Clip::open(m, &Limits::default())
    }

    fn all_frames(clip: &Clip) -> Vec<(usize, Frame)> {
        let wanted: Vec<usize> = (0..clip.frame_count()).collect();
        clip.decode(&wanted, &Limits::default()).unwrap()
    }

    #[test]
    fn png_frames_become_bt601_luma() {
        let red = png(3, 2, [255, 0, 0]);
        let clip = open(&[media("image/png", &red)]).unwrap();
        assert_eq!(clip.frame_count(), 1);
        let (_, frame) = &all_frames(&clip)[0];
        assert_eq!((frame.width, frame.height), (3, 2));
        assert!(frame.luma.iter().all(|&y| (y - 0.299).abs() < 1e-6));
    }

    /// Deterministic bytes that are not a pattern a vector path could get right by accident.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect()
    }

    /// Where the SDK is built for wasm with SIMD (as the guest is, and as `scripts/test` runs
    /// these tests a second time) this holds the vector path to the plain formula, lengths that
    /// leave a tail included.
    #[test]
    fn rgb_and_rgba_luma_is_the_plain_formula_to_the_bit() {
        for channels in [3, 4] {
            for pixels in 0..70 {
                let raw = noise(pixels * channels, (pixels * channels) as u32);
                let plain: Vec<u32> = raw
                    .chunks_exact(channels)
                    .map(|p| (luma(f32::from(p[0]), f32::from(p[1]), f32::from(p[2])) / 255.0).to_bits())
                    .collect();
                let ours: Vec<u32> = rgb8_luma(&raw, channels).iter().map(|v| v.to_bits()).collect();
                assert_eq!(ours, plain, "{pixels} pixels of {channels} channels");
            }
        }
    }

    /// PNGs are decoded with the `png` crate directly; every colour type and depth gives the
    /// luma that `image`'s decoder gives.
    #[test]
    fn png_luma_is_what_the_image_crate_decodes() {
        use image::{DynamicImage as D, ImageBuffer};
        let (w, h) = (37u32, 5u32);
        let n = (w * h) as usize;
        let bytes = |channels: usize, seed| noise(n * channels, seed);
        let words = |channels: usize, seed| -> Vec<u16> {
            noise(2 * n * channels, seed).chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
        };
        let images = [
            D::ImageLuma8(ImageBuffer::from_raw(w, h, bytes(1, 1)).unwrap()),
            D::ImageLumaA8(ImageBuffer::from_raw(w, h, bytes(2, 2)).unwrap()),
            D::ImageRgb8(ImageBuffer::from_raw(w, h, bytes(3, 3)).unwrap()),
            D::ImageRgba8(ImageBuffer::from_raw(w, h, bytes(4, 4)).unwrap()),
            D::ImageLuma16(ImageBuffer::from_raw(w, h, words(1, 5)).unwrap()),
            D::ImageLumaA16(ImageBuffer::from_raw(w, h, words(2, 6)).unwrap()),
            D::ImageRgb16(ImageBuffer::from_raw(w, h, words(3, 7)).unwrap()),
            D::ImageRgba16(ImageBuffer::from_raw(w, h, words(4, 8)).unwrap()),
        ];
        for image in images {
            let what = format!("{:?}", image.color());
            let mut data = Cursor::new(Vec::new());
            image.write_to(&mut data, ImageFormat::Png).unwrap();
            let data = data.into_inner();
            let theirs = to_luma(image::load_from_memory_with_format(&data, ImageFormat::Png).unwrap());
            let (_, ours) = all_frames(&open(&[media("image/png", &data)]).unwrap()).remove(0);
            assert_eq!((ours.width, ours.height), (w, h), "{what}");
            assert!(ours.luma == theirs.luma, "{what}: the luma differs from the image crate's");
        }
    }

    /// Chunk checksums are not checked (see `decode_png`): a wrong CRC decodes to the same
    /// frame, while damage to the image data itself is still refused.
    #[test]
    fn png_chunk_crcs_are_not_checked_but_damaged_data_is_refused() {
        let good = png(8, 4, [10, 200, 30]);
        let idat = good.windows(4).position(|w| w == b"IDAT").unwrap();
        let length = u32::from_be_bytes(good[idat - 4..idat].try_into().unwrap()) as usize;
        let mut wrong_crc = good.clone();
        wrong_crc[idat + 4 + length] ^= 0xff;
        let frame = |data: &[u8]| all_frames(&open(&[media("image/png", data)]).unwrap()).remove(0).1.luma;
        assert_eq!(frame(&wrong_crc), frame(&good));

        let mut damaged = good.clone();
        damaged[idat + 4..idat + 4 + length].fill(0xff);
        let clip = open(&[media("image/png", &damaged)]).unwrap();
        let error = clip.decode(&[0], &Limits::default()).unwrap_err().to_string();
        assert!(error.contains("PNG does not decode"), "{error}");
    }

    #[test]
    fn grey_png_is_used_as_is() {
        let img = image::GrayImage::from_pixel(2, 2, image::Luma([51]));
        let mut data = Cursor::new(Vec::new());
        img.write_to(&mut data, ImageFormat::Png).unwrap();
        let data = data.into_inner();
        let clip = open(&[media("image/png", &data)]).unwrap();
        assert!(all_frames(&clip)[0].1.luma.iter().all(|&y| (y - 0.2).abs() < 1e-6));
    }

    #[test]
    fn multipart_stills_are_frames_in_order() {
        let a = png(4, 4, [0, 0, 0]);
        let b = png(4, 4, [255, 255, 255]);
        let clip = open(&[media("image/png", &a), media("image/png", &b)]).unwrap();
        let frames = all_frames(&clip);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].1.luma[0], 0.0);
        assert!((frames[1].1.luma[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn jpeg_decodes() {
        let img = image::RgbImage::from_pixel(16, 8, image::Rgb([128, 128, 128]));
        let mut data = Cursor::new(Vec::new());
        img.write_to(&mut data, ImageFormat::Jpeg).unwrap();
        let data = data.into_inner();
        let clip = open(&[media("image/jpeg", &data)]).unwrap();
        let (_, frame) = &all_frames(&clip)[0];
        assert_eq!((frame.width, frame.height), (16, 8));
        assert!(frame.luma.iter().all(|&y| (y - 128.0 / 255.0).abs() < 0.02));
    }

    /// A GIF with a `width`×`height` canvas (black and white palette) and `frames` 1×1 white
    /// frames at the top-left corner, written by hand.
    fn patchy_gif(width: u16, height: u16, frames: usize) -> Vec<u8> {
        let mut out = b"GIF89a".to_vec();
        out.extend_from_slice(&width.to_le_bytes());
        out.extend_from_slice(&height.to_le_bytes());
        out.extend_from_slice(b"\x80\x00\x00\x00\x00\x00\xff\xff\xff");
        for _ in 0..frames {
            // Image descriptor 1×1 at (0, 0); LZW data for one pixel of colour 1.
            out.extend_from_slice(b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x4c\x01\x00");
        }
        out.push(0x3b);
        out
    }

    #[test]
    fn gif_work_follows_the_frames_not_the_canvas() {
        // Decoding used to composite every frame over the whole canvas: 3,000 one-pixel frames
        // on 4096×4096 were 50 billion pixel copies. Now each frame costs its own rectangle.
        let data = patchy_gif(4096, 4096, 3000);
        let prepared = crate::prepare(&[media("image/gif", &data)], &Limits::default()).unwrap();
        assert_eq!((prepared.frames_total, prepared.frames_used), (3000, 8));
        // The fuzzer's find: a wide canvas and small frames, once over 10 s to decode.
        let found = include_bytes!("../../fuzz/regressions/decode_gif/full-canvas-per-frame.gif");
        let _ = crate::prepare(&[media("image/gif", found)], &Limits::default());
    }

    #[test]
    fn gif_frames_beyond_the_decoding_budget_are_refused() {
        let data = patchy_gif(8, 6, 5);
        let tight = Limits { max_gif_pixels: 3, ..Limits::default() };
        let clip = Clip::open(&[media("image/gif", &data)], &tight).unwrap();
        let e = clip.decode(&[0, 4], &tight).unwrap_err();
        assert!(matches!(&e, DecodeError::Malformed(m) if m.contains("more than 3 pixels")), "{e:?}");
        let frames = clip.decode(&[0, 2], &tight).unwrap();
        // The white pixel at the corner, black elsewhere.
        assert_eq!((frames[1].1.luma[0], frames[1].1.luma[1]), (1.0, 0.0));
    }

    #[test]
    fn y4m_header_fields_may_start_with_any_character() {
        // The fuzzer's find: a header field starting with a two-byte character made the tag
        // split panic, a trap in wasm.
        let mut data = "YUV4MPEG2 W2 H2 Cmono \u{5fa}1 XYZ\n".as_bytes().to_vec();
        data.extend_from_slice(b"FRAME\n\x10\x20\x30\x40");
        let clip = open(&[media("video/x-yuv4mpeg", &data)]).unwrap();
        assert_eq!(clip.frame_count(), 1);
        let found = include_bytes!("../../fuzz/regressions/decode_y4m/multibyte-header-field.y4m");
        assert!(crate::prepare(&[media("video/x-yuv4mpeg", found)], &Limits::default()).is_err());
    }

    #[test]
    fn gif_frames_are_counted_and_decoded_by_number() {
        let data = gif(&[[0, 0, 0], [255, 255, 255], [0, 0, 255]]);
        let clip = open(&[media("image/gif", &data)]).unwrap();
        assert_eq!(clip.frame_count(), 3);
        let frames = clip.decode(&[0, 2], &Limits::default()).unwrap();
        assert_eq!(frames.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(frames[0].1.luma[0], 0.0);
        // GIF palettes quantise colours; blue stays close to BT.601's 0.114.
        assert!((frames[1].1.luma[0] - 0.114).abs() < 0.01, "{}", frames[1].1.luma[0]);
    }

    #[test]
    fn y4m_luma_plane_is_used_as_is() {
        let data = y4m(5, 3, "420jpeg", &[16, 235, 100]);
        let clip = open(&[media("video/x-yuv4mpeg", &data)]).unwrap();
        assert_eq!(clip.frame_count(), 3);
        let frames = all_frames(&clip);
        assert_eq!((frames[1].1.width, frames[1].1.height), (5, 3));
        assert!(frames[0].1.luma.iter().all(|&y| y == 16.0 / 255.0));
        assert!(frames[1].1.luma.iter().all(|&y| y == 235.0 / 255.0));
    }

    #[test]
    fn octet_stream_is_sniffed() {
        let data = png(2, 2, [1, 2, 3]);
        assert!(matches!(open(&[media("application/octet-stream", &data)]).unwrap(), Clip::Stills(_)));
        let data = y4m(2, 2, "mono", &[1]);
        assert!(matches!(open(&[media("", &data)]).unwrap(), Clip::Y4m(_)));
    }

    /// Bad media and the words its error must contain.
    #[test]
    fn bad_media_is_refused_with_a_reason() {
        let good_png = png(8, 8, [9, 9, 9]);
        let truncated_png = good_png[..good_png.len() / 2].to_vec();
        let huge_png = png_header_claiming(100_000, 100_000);
        let good_y4m = y4m(4, 4, "420jpeg", &[1, 2]);
        let truncated_y4m = good_y4m[..good_y4m.len() - 3].to_vec();
        let huge_y4m = b"YUV4MPEG2 W100000 H100000 C420jpeg\nFRAME\n".to_vec();
        let zero_frame_y4m = b"YUV4MPEG2 W4 H4 C420jpeg\n".to_vec();
        let odd_colour = y4m(4, 4, "420p10", &[1]);
        let good_gif = gif(&[[1, 2, 3]]);
        let truncated_gif = good_gif[..good_gif.len() - 10].to_vec();

        let cases: Vec<(&str, &[u8], &str)> = vec![
            ("image/png", &truncated_png, "PNG does not decode"),
            ("image/png", b"not a png", "PNG does not decode"),
            ("image/png", &huge_png, "100000x100000 exceeds the limit"),
            ("image/jpeg", b"\xFF\xD8\xFF\xE0garbage", "JPEG does not decode"),
            ("image/gif", &truncated_gif, "GIF"),
            ("image/gif", b"GIF89a", "GIF does not decode"),
            ("video/x-yuv4mpeg", &truncated_y4m, "frame 1 is truncated"),
            ("video/x-yuv4mpeg", &huge_y4m, "exceeds the limit"),
            ("video/x-yuv4mpeg", &zero_frame_y4m, "no frames"),
            ("video/x-yuv4mpeg", b"YUV4MPEG W4 H4\n", "does not start with"),
            ("video/x-yuv4mpeg", b"YUV4MPEG2 H4\n", "no width"),
            ("video/x-yuv4mpeg", &odd_colour, "colour space '420p10'"),
        ];
        for (content_type, data, expected) in cases {
            let result = open(&[media(content_type, data)]).and_then(|clip| {
                let wanted: Vec<usize> = (0..clip.frame_count()).collect();
                clip.decode(&wanted, &Limits::default()).map(|_| ())
            });
            match result {
                Err(DecodeError::Malformed(m)) => {
                    assert!(m.contains(expected), "{content_type}: '{m}' lacks '{expected}'")
                }
                other => panic!("{content_type} ({expected}): expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_types_are_unsupported_and_list_what_is_accepted() {
        let err = open(&[media("video/webm", b"\x1a\x45\xdf\xa3")]).unwrap_err();
        match err {
            DecodeError::Unsupported(m) => {
                assert!(m.contains("video/webm"), "{m}");
                assert!(m.contains("image/gif"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            open(&[media("application/octet-stream", b"??")]),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn a_video_cannot_be_one_part_of_many() {
        let p = png(2, 2, [0, 0, 0]);
        let g = gif(&[[0, 0, 0]]);
        let err = open(&[media("image/png", &p), media("image/gif", &g)]).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported(ref m) if m.contains("part 2")), "{err:?}");
    }

    #[test]
    fn no_media_is_malformed() {
        assert!(matches!(open(&[]), Err(DecodeError::Malformed(m)) if m.contains("no media")));
    }

    #[test]
    fn frame_limit_is_enforced_before_decoding() {
        let limits = Limits { max_frames: 2, ..Limits::default() };
        let data = y4m(2, 2, "420jpeg", &[1, 2, 3]);
        let err = Clip::open(&[media("video/x-yuv4mpeg", &data)], &limits).unwrap_err();
        assert!(err.to_string().contains("more than 2 frames"), "{err}");
        let data = gif(&[[0, 0, 0], [1, 1, 1], [2, 2, 2]]);
        let err = Clip::open(&[media("image/gif", &data)], &limits).unwrap_err();
        assert!(err.to_string().contains("more than 2 frames"), "{err}");
    }
}
