//! MP4 and QuickTime (ISO-BMFF) files with H.264 video.
//!
//! The `mp4` crate reads the file's sample tables; the `rusty_h264` decoder (pure Rust, no
//! threads, no global allocator of its own) decodes the pictures. Before anything is decoded the
//! file is checked: the codec of its video track, the sequence parameter set's chroma format,
//! bit depth and coded size, the number of samples, the memory the reference pictures take,
//! and the pixels that decoding the wanted frames costs. Only the frames that wanted frames
//! need are decoded: from the keyframe at or before each one, never the whole of a long file.

use std::io::Cursor;

use mp4::Mp4Reader;
use rusty_h264_decoder::{Decoder, Sps};

use crate::decode::{DecodeError, Limits, check_size};
use crate::preprocess::Frame;

/// What this decoder reads, as the errors name it.
pub const SUPPORTED: &str = "H.264 (Baseline, Main or High profile; 8-bit 4:2:0; progressive) in \
                             an MP4 or QuickTime file that is not fragmented";

/// The line that turns any video into one this decoder reads.
pub const CONVERT: &str = "ffmpeg -i in.mp4 -c:v libx264 -pix_fmt yuv420p -movflags +faststart out.mp4";

/// Most bytes the decoder's reference pictures may take (`max_num_ref_frames` + 1 pictures).
const MAX_DPB_BYTES: u64 = 96 << 20;

/// A parsed MP4: the video track's tables, nothing decoded yet.
#[derive(Debug)]
pub struct Mp4<'a> {
    data: &'a [u8],
    /// Each sample's bytes in `data` (start, length), in decode order, all within it.
    samples: Vec<(usize, usize)>,
    width: u32,
    height: u32,
    /// Pixels in one coded picture, the unit of decoding work.
    coded_pixels: u64,
    /// Sample numbers (from 1, in decode order) in display order.
    display: Vec<u32>,
    /// Each displayed frame's time in seconds from the first.
    times: Vec<f64>,
    /// When the last frame ends, in seconds from the first.
    duration: f64,
    /// Keyframes' sample numbers, ascending; `None` when every sample is one.
    sync: Option<Vec<u32>>,
    /// The sequence and picture parameter sets, as an Annex-B prefix.
    parameter_sets: Vec<u8>,
    nal_length: usize,
}

fn bad(m: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(format!("MP4: {m}"))
}

fn unsupported(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::Unsupported(format!(
        "MP4: {what} is not supported; this guest reads {SUPPORTED}. Convert it with: {CONVERT}"
    ))
}

/// Whether `data` starts like an ISO-BMFF file: an `ftyp` box, or the boxes a QuickTime file
/// without one starts with.
pub fn sniff(data: &[u8]) -> bool {
    matches!(data.get(4..8), Some(b"ftyp" | b"moov" | b"mdat" | b"wide" | b"free" | b"skip"))
}

impl<'a> Mp4<'a> {
    /// Reads the file's boxes and checks them against `limits`; decodes no picture.
    pub fn parse(data: &'a [u8], limits: &Limits) -> Result<Self, DecodeError> {
        let layout = scan(data);
        if let Some((kind, declared)) = layout.cut {
            return Err(bad(format_args!(
                "the file is truncated: its '{}' box declares {declared} bytes; {} are left",
                String::from_utf8_lossy(&kind),
                data.len() - layout.whole
            )));
        }
        if layout.fragmented {
            return Err(unsupported("a fragmented file (moof boxes)"));
        }
        if let Err(e) = check_tree(data, b"file", 0) {
            return Err(bad(e));
        }
        if !layout.entries.iter().any(|e| e == b"avc1") {
            return Err(match layout.entries.first() {
                Some(entry) => unsupported(format_args!("video coded as {}", codec_name(entry))),
                None if layout.has_moov => bad("the file has no video track"),
                None => bad("the file has no movie box (moov); is it truncated?"),
            });
        }
        let reader = Mp4Reader::read_header(Cursor::new(data), data.len() as u64).map_err(bad)?;
        let mut tracks: Vec<_> = reader
            .tracks()
            .iter()
            .filter(|(_, t)| t.trak.mdia.minf.stbl.stsd.avc1.is_some())
            .map(|(&id, _)| id)
            .collect();
        tracks.sort_unstable();
        let track = *tracks.first().ok_or_else(|| bad("the file has no H.264 video track"))?;
        let trak = &reader.tracks()[&track].trak;
        let stbl = &trak.mdia.minf.stbl;
        let avcc = &stbl.stsd.avc1.as_ref().expect("filtered on avc1").avcc;

        let nal_length = match avcc.length_size_minus_one & 3 {
            0 => 1,
            1 => 2,
            3 => 4,
            n => return Err(bad(format_args!("NAL length size {} is not 1, 2 or 4", n + 1))),
        };
        let Some(sps) = avcc.sequence_parameter_sets.first() else {
            return Err(bad("the avcC box has no sequence parameter set"));
        };
        if avcc.picture_parameter_sets.is_empty() {
            return Err(bad("the avcC box has no picture parameter set"));
        }
        let sps = parse_sps(&sps.bytes)?;
        let (width, height, coded_pixels) = check_sps(&sps, limits)?;
        let mut parameter_sets = Vec::new();
        for set in avcc.sequence_parameter_sets.iter().chain(&avcc.picture_parameter_sets) {
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(&set.bytes);
        }

        let count = stbl.stsz.sample_count as usize;
        if count == 0 {
            return Err(bad("the video track has no frames"));
        }
        if count > limits.max_frames {
            return Err(bad(format_args!(
                "the video track has {count} frames; the limit is {}",
                limits.max_frames
            )));
        }
        let timescale = trak.mdia.mdhd.timescale;
        if timescale == 0 {
            return Err(bad("the video track's timescale is 0"));
        }
        let deltas =
            expand(stbl.stts.entries.iter().map(|e| (e.sample_count, i64::from(e.sample_delta))), count)
                .ok_or_else(|| {
                    bad("the time-to-sample table (stts) covers fewer samples than the track has")
                })?;
        let composition = match &stbl.ctts {
            Some(ctts) => {
                expand(ctts.entries.iter().map(|e| (e.sample_count, i64::from(e.sample_offset))), count)
                    .ok_or_else(|| {
                        bad("the composition offset table (ctts) covers fewer samples than the track has")
                    })?
            }
            None => vec![0; count],
        };
        let (display, times, duration) = display_order(&deltas, &composition, timescale);
        // Keyframes that are samples of the track (numbered from 1), each once.
        let sync = stbl.stss.as_ref().map(|stss| {
            let mut s: Vec<u32> =
                stss.entries.iter().copied().filter(|&n| n >= 1 && n as usize <= count).collect();
            s.sort_unstable();
            s.dedup();
            s
        });
        let offsets: Vec<u64> = match (&stbl.stco, &stbl.co64) {
            (Some(stco), _) => stco.entries.iter().map(|&o| u64::from(o)).collect(),
            (None, Some(co64)) => co64.entries.clone(),
            (None, None) => return Err(bad("the video track has no chunk offsets (stco or co64)")),
        };
        let runs: Vec<(u32, u32)> =
            stbl.stsc.entries.iter().map(|e| (e.first_chunk, e.samples_per_chunk)).collect();
        let sizes = Sizes { fixed: stbl.stsz.sample_size, each: &stbl.stsz.sample_sizes };
        let samples = locate(&sizes, &offsets, &runs, count, data.len())?;
        Ok(Mp4 {
            data,
            samples,
            width,
            height,
            coded_pixels,
            display,
            times,
            duration,
            sync,
            parameter_sets,
            nal_length,
        })
    }

    /// Frames in the video track.
    pub fn frame_count(&self) -> usize {
        self.display.len()
    }

    /// The displayed size of a frame.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Each frame's display time in seconds from the first frame.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// When the last frame ends, in seconds from the first.
    pub fn duration(&self) -> f64 {
        self.duration
    }

    /// The keyframe at or before sample `sample`: where decoding must start to show it.
    fn keyframe_before(&self, sample: u32) -> u32 {
        match &self.sync {
            None => sample,
            Some(sync) => match sync.partition_point(|&s| s <= sample) {
                0 => 1,
                n => sync[n - 1],
            },
        }
    }

    /// The runs of samples (first, last) to decode to show the display frames `wanted`, in
    /// decode order: a run continues while no keyframe lies between its end and the next target.
    fn plan(&self, wanted: &[usize]) -> Result<Vec<(u32, u32)>, DecodeError> {
        let mut targets = wanted
            .iter()
            .map(|&i| {
                self.display
                    .get(i)
                    .copied()
                    .ok_or_else(|| bad(format_args!("frame {i} asked of {} frames", self.display.len())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        targets.sort_unstable();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for target in targets {
            let start = self.keyframe_before(target);
            match runs.last_mut() {
                Some((_, last)) if start <= *last + 1 && target >= *last => *last = target,
                _ => runs.push((start, target)),
            }
        }
        Ok(runs)
    }

    /// Decodes the display frames `wanted` (distinct) and hands each to `each` with its number,
    /// in decode order.
    pub fn decode_each(
        &self,
        wanted: &[usize],
        limits: &Limits,
        mut each: impl FnMut(usize, Frame),
    ) -> Result<(), DecodeError> {
        let runs = self.plan(wanted)?;
        let pictures: u64 = runs.iter().map(|(a, b)| u64::from(b - a + 1)).sum();
        if pictures.saturating_mul(self.coded_pixels) > limits.max_video_pixels {
            return Err(bad(format_args!(
                "showing the sampled frames means decoding {pictures} pictures of {}x{} from the keyframes \
                 before them, more than the {} pixels this guest decodes from one video; re-encode it with \
                 keyframes closer together (ffmpeg's -g 30)",
                self.width, self.height, limits.max_video_pixels
            )));
        }
        // Display frame of each wanted sample.
        let mut wanted_at: Vec<(u32, usize)> = wanted.iter().map(|&i| (self.display[i], i)).collect();
        wanted_at.sort_unstable();
        let mut unit = Vec::new();
        for (start, end) in runs {
            let mut decoder = Decoder::new();
            for sample in start..=end {
                let (at, len) = self.samples[sample as usize - 1];
                let bytes = &self.data[at..at + len];
                unit.clear();
                if sample == start {
                    unit.extend_from_slice(&self.parameter_sets);
                }
                self.annex_b(bytes, sample, limits, &mut unit)?;
                let picture = decoder.decode(&unit).map_err(|e| h264_error(e, sample))?;
                let Ok(at) = wanted_at.binary_search_by_key(&sample, |(s, _)| *s) else { continue };
                let picture = picture.ok_or_else(|| bad(format_args!("sample {sample} holds no picture")))?;
                if (picture.width, picture.height) != (self.width as usize, self.height as usize) {
                    return Err(bad(format_args!(
                        "sample {sample} is {}x{}; the track's first parameter set says {}x{}",
                        picture.width, picture.height, self.width, self.height
                    )));
                }
                let luma = picture.y.iter().map(|&v| f32::from(v) / 255.0).collect();
                each(wanted_at[at].1, Frame::new(self.width, self.height, luma));
            }
        }
        Ok(())
    }

    /// Appends sample `sample`'s NAL units to `unit` with Annex-B start codes, checking any
    /// sequence parameter set it carries as the track's own was checked.
    fn annex_b(
        &self,
        bytes: &[u8],
        sample: u32,
        limits: &Limits,
        unit: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.len() < self.nal_length {
                return Err(bad(format_args!("sample {sample} ends inside a NAL length")));
            }
            let (len, tail) = rest.split_at(self.nal_length);
            let len = len.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
            let nal = tail.get(..len).ok_or_else(|| {
                bad(format_args!(
                    "sample {sample} is truncated: a NAL unit of {len} bytes, {} left",
                    tail.len()
                ))
            })?;
            if nal.first().is_some_and(|h| h & 0x1F == 7) {
                let (w, h, _) = check_sps(&parse_sps(nal)?, limits)?;
                if (w, h) != (self.width, self.height) {
                    return Err(bad(format_args!(
                        "sample {sample} changes the frame size to {w}x{h} from {}x{}",
                        self.width, self.height
                    )));
                }
            }
            unit.extend_from_slice(&[0, 0, 0, 1]);
            unit.extend_from_slice(nal);
            rest = &tail[len..];
        }
        Ok(())
    }
}

/// The samples in display order (their numbers, from 1), each one's time in seconds from the
/// first shown, and when the last ends, from each sample's decode-time delta (stts) and
/// composition offset (ctts) in `timescale` units: decode time is the running sum of the
/// deltas, and display time adds the offset.
fn display_order(deltas: &[i64], composition: &[i64], timescale: u32) -> (Vec<u32>, Vec<f64>, f64) {
    let mut shown: Vec<(i64, u32)> = Vec::with_capacity(deltas.len());
    let (mut dts, mut last_end) = (0i64, i64::MIN);
    for (i, (delta, offset)) in deltas.iter().zip(composition).enumerate() {
        let pts = dts.saturating_add(*offset);
        shown.push((pts, i as u32 + 1));
        last_end = last_end.max(pts.saturating_add(*delta));
        dts = dts.saturating_add(*delta);
    }
    shown.sort_unstable();
    let first = shown.first().map_or(0, |s| s.0);
    let seconds = |t: i64| t.saturating_sub(first) as f64 / f64::from(timescale);
    let times = shown.iter().map(|&(t, _)| seconds(t)).collect();
    (shown.into_iter().map(|(_, sample)| sample).collect(), times, seconds(last_end))
}

/// The sample size table: one size for every sample, or each sample's own.
struct Sizes<'a> {
    fixed: u32,
    each: &'a [u32],
}

/// Where each of the track's `count` samples lies in a file of `len` bytes, from its sample
/// sizes (stsz), chunks (stsc) and chunk offsets (stco, co64), in checked arithmetic: every
/// sample must lie within the file. (The `mp4` crate's own reading divides by a chunk's sample
/// count and sums sizes unchecked: it panics on tables a fuzzer writes.)
fn locate(
    sizes: &Sizes,
    offsets: &[u64],
    runs: &[(u32, u32)],
    count: usize,
    len: usize,
) -> Result<Vec<(usize, usize)>, DecodeError> {
    if sizes.fixed == 0 && sizes.each.len() < count {
        return Err(bad("the sample size table (stsz) lists fewer sizes than samples"));
    }
    let size = |i: usize| if sizes.fixed > 0 { sizes.fixed } else { sizes.each[i] } as usize;
    let mut samples = Vec::with_capacity(count);
    for (i, &(first_chunk, per_chunk)) in runs.iter().enumerate() {
        let next = runs.get(i + 1).map_or(offsets.len() as u64 + 1, |n| u64::from(n.0));
        if first_chunk == 0 || u64::from(first_chunk) >= next || per_chunk == 0 {
            return Err(bad(format_args!(
                "the sample-to-chunk table (stsc) has a bad entry {i}: first chunk {first_chunk}, \
                 {per_chunk} samples a chunk"
            )));
        }
        for chunk in u64::from(first_chunk)..next {
            let Some(&start) = offsets.get(chunk as usize - 1) else { break };
            let mut at = start;
            for _ in 0..per_chunk {
                if samples.len() == count {
                    return Ok(samples);
                }
                let n = size(samples.len());
                let end = at.checked_add(n as u64).filter(|&end| end <= len as u64).ok_or_else(|| {
                    bad(format_args!(
                        "sample {} ({n} bytes at byte {at}) lies outside the file of {len} bytes",
                        samples.len() + 1
                    ))
                })?;
                samples.push((at as usize, n));
                at = end;
            }
        }
    }
    if samples.len() < count {
        return Err(bad(format_args!(
            "the chunk tables (stsc, stco) place {} of the track's {count} samples",
            samples.len()
        )));
    }
    Ok(samples)
}

/// Expands a run-length table of (count, value) to one value per sample: `None` when it covers
/// fewer than `count` samples. Runs past `count` are ignored, so a hostile count allocates
/// nothing beyond the sample count already checked against the limits.
fn expand(runs: impl Iterator<Item = (u32, i64)>, count: usize) -> Option<Vec<i64>> {
    let mut values = Vec::with_capacity(count);
    for (n, value) in runs {
        let take = (n as usize).min(count - values.len());
        values.extend(std::iter::repeat_n(value, take));
        if values.len() == count {
            return Some(values);
        }
    }
    None
}

fn parse_sps(nal: &[u8]) -> Result<Sps, DecodeError> {
    let payload = nal.get(1..).ok_or_else(|| bad("an empty sequence parameter set"))?;
    let rbsp = rusty_h264_common::nal::emulation_unprevent(payload);
    Sps::parse(&rbsp).map_err(|e| h264_error(e, 0))
}

/// The displayed size of `sps`'s pictures and the pixels of one coded picture, checked against
/// `limits` and the memory its reference pictures take.
fn check_sps(sps: &Sps, limits: &Limits) -> Result<(u32, u32, u64), DecodeError> {
    let coded_w = sps.pic_width_in_mbs as u64 * 16;
    let coded_h = sps.pic_height_in_mbs as u64 * 16;
    let crop_x = 2 * u64::from(sps.frame_crop_left + sps.frame_crop_right);
    let crop_y =
        2 * u64::from(sps.frame_crop_top + sps.frame_crop_bottom) * if sps.frame_mbs_only { 1 } else { 2 };
    let width = u32::try_from(coded_w.saturating_sub(crop_x)).unwrap_or(u32::MAX);
    let height = u32::try_from(coded_h.saturating_sub(crop_y)).unwrap_or(u32::MAX);
    check_size(width, height, limits).map_err(bad)?;
    let coded = coded_w * coded_h;
    let dpb = coded * 3 / 2 * (u64::from(sps.max_num_ref_frames) + 1);
    if dpb > MAX_DPB_BYTES {
        return Err(bad(format_args!(
            "{} reference pictures of {width}x{height} take {} MiB, more than this guest's {} MiB",
            sps.max_num_ref_frames,
            dpb >> 20,
            MAX_DPB_BYTES >> 20
        )));
    }
    Ok((width, height, coded))
}

fn h264_error(e: rusty_h264_decoder::DecodeError, sample: u32) -> DecodeError {
    use rusty_h264_decoder::DecodeError as E;
    let at = if sample == 0 { "the sequence parameter set".to_string() } else { format!("sample {sample}") };
    match e {
        E::Unsupported(tool) => unsupported(format_args!("H.264 using {tool} ({at})")),
        E::Truncated => bad(format_args!("H.264 {at} is truncated")),
        E::MissingParameterSet => bad(format_args!("H.264 {at} comes before its parameter sets")),
        E::Internal(what) => bad(format_args!("H.264 {at} does not decode: {what}")),
    }
}

/// What the box tree says before the `mp4` crate reads it: whether the file is fragmented, and
/// the sample entry (codec) of each track, so an unsupported codec is named rather than failing
/// as a parse error.
struct Layout {
    has_moov: bool,
    fragmented: bool,
    entries: Vec<[u8; 4]>,
    /// Bytes of the file taken by whole top-level boxes.
    whole: usize,
    /// The top-level box that runs past the end of the file, and the size it declares.
    cut: Option<([u8; 4], u64)>,
}

fn scan(data: &[u8]) -> Layout {
    let mut layout = Layout { has_moov: false, fragmented: false, entries: Vec::new(), whole: 0, cut: None };
    for (kind, body, len) in boxes(data) {
        layout.whole += len;
        match &kind {
            b"moof" => layout.fragmented = true,
            b"moov" => {
                layout.has_moov = true;
                for (kind, trak, _) in boxes(body) {
                    match &kind {
                        b"mvex" => layout.fragmented = true,
                        b"trak" => layout.entries.extend(sample_entries(trak)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let rest = &data[layout.whole..];
    if let (Some(size), Some(kind)) = (rest.get(..4), rest.get(4..8)) {
        let size = u32::from_be_bytes(size.try_into().expect("4 bytes"));
        let declared = match size {
            1 => rest.get(8..16).map_or(0, |s| u64::from_be_bytes(s.try_into().expect("8 bytes"))),
            n => u64::from(n),
        };
        if declared > rest.len() as u64 {
            layout.cut = Some((kind.try_into().expect("4 bytes"), declared));
        }
    }
    layout
}

/// The sample entry types of a `trak` whose handler is video.
fn sample_entries(trak: &[u8]) -> Vec<[u8; 4]> {
    let Some(mdia) = child(trak, b"mdia") else { return Vec::new() };
    // hdlr: version/flags (4), pre_defined (4), handler_type (4).
    if child(mdia, b"hdlr").and_then(|h| h.get(8..12)) != Some(b"vide") {
        return Vec::new();
    }
    let Some(stsd) = child(mdia, b"minf").and_then(|m| child(m, b"stbl")).and_then(|s| child(s, b"stsd"))
    else {
        return Vec::new();
    };
    // stsd: version/flags (4), entry_count (4), then the entries as boxes.
    stsd.get(8..).map(|entries| boxes(entries).map(|(k, _, _)| k).collect()).unwrap_or_default()
}

/// Checks every box list the `mp4` crate walks: each child at least its own header long and
/// inside its parent. That crate's loops advance by each child's declared size, so a child of
/// size 0 to 7 inside a container would make them spin forever (found by fuzzing; mp4 0.14
/// checks only the top level).
fn check_tree(data: &[u8], parent: &[u8; 4], depth: usize) -> Result<(), String> {
    if depth > 16 {
        return Err("boxes nest more than 16 deep".into());
    }
    let mut rest = data;
    while !rest.is_empty() {
        let (kind, body, len) = boxes(rest).next().ok_or_else(|| {
            let kind = rest.get(4..8).map(String::from_utf8_lossy).unwrap_or_default();
            format!("a '{kind}' box inside another has a size that does not fit it")
        })?;
        let size = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        if size == 0 && depth > 0 {
            return Err(format!("a '{}' box inside another has size 0", String::from_utf8_lossy(&kind)));
        }
        // Where each container's children start in its body (a sample entry has fields first).
        let children = match &kind {
            b"moov" | b"trak" | b"edts" | b"mdia" | b"minf" | b"dinf" | b"stbl" | b"udta" | b"mvex"
            | b"moof" | b"traf" | b"ilst" => Some(0),
            b"meta" => Some(if body.get(4..8) == Some(b"hdlr") { 0 } else { 4 }),
            // Full boxes with an entry count: version and flags, the count, then the entries.
            b"stsd" | b"dref" => Some(8),
            b"mp4a" => Some(28),
            _ => None,
        };
        // The items of an `ilst` that the crate reads hold `data` boxes.
        let item = parent == b"ilst" && matches!(&kind, b"\xa9nam" | b"\xa9day" | b"covr" | b"desc");
        if let Some(at) = children {
            check_tree(body.get(at..).unwrap_or_default(), &kind, depth + 1)?;
        } else if item {
            check_tree(body, &kind, depth + 1)?;
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// The body of the first box of type `want` in `data`.
fn child<'a>(data: &'a [u8], want: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(kind, _, _)| kind == want).map(|(_, body, _)| body)
}

/// The boxes in `data`, each as its type, body and whole length; stops at the first that does
/// not fit.
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8], usize)> {
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as u64;
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => (16, u64::from_be_bytes(data.get(8..16)?.try_into().ok()?)),
            n => (8, n),
        };
        let size = usize::try_from(size).ok().filter(|&s| s >= header && s <= data.len())?;
        let body = &data[header..size];
        data = &data[size..];
        Some((kind, body, size))
    })
}

fn codec_name(entry: &[u8; 4]) -> String {
    let name = match entry {
        b"hvc1" | b"hev1" => "HEVC (H.265)",
        b"av01" => "AV1",
        b"vp09" => "VP9",
        b"vp08" => "VP8",
        b"avc3" | b"avc4" => "H.264 with in-band parameter sets (avc3)",
        b"mp4v" => "MPEG-4 Part 2",
        b"mjpa" | b"mjpb" | b"jpeg" => "Motion JPEG",
        b"apch" | b"apcn" | b"apcs" | b"apco" | b"ap4h" => "Apple ProRes",
        _ => return format!("'{}'", String::from_utf8_lossy(entry)),
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &[u8] = include_bytes!("../../fuzz/seeds/decode_mp4/main-bframes.mp4");

    #[test]
    fn frames_come_in_display_order_with_their_times() {
        let mp4 = Mp4::parse(SEED, &Limits::default()).unwrap();
        assert_eq!(mp4.frame_count(), 6);
        assert_eq!(mp4.size(), (48, 32));
        let times = mp4.times();
        assert_eq!(times[0], 0.0);
        assert!(times.windows(2).all(|w| (w[1] - w[0] - 0.1).abs() < 1e-9), "{times:?}");
        // B-frames: the samples are stored out of display order.
        assert_ne!(mp4.display, (1..=6).collect::<Vec<u32>>());
    }

    #[test]
    fn decoding_starts_at_the_keyframe_before_each_wanted_frame() {
        let mp4 = Mp4::parse(SEED, &Limits::default()).unwrap();
        let sync = mp4.sync.clone().unwrap();
        assert!(sync.len() >= 2, "the seed has a keyframe every 4 frames: {sync:?}");
        let last = mp4.frame_count() - 1;
        let runs = mp4.plan(&[last]).unwrap();
        assert_eq!(runs.len(), 1);
        let (start, end) = runs[0];
        assert!(sync.contains(&start) && start > 1, "decoding {runs:?} starts from the first keyframe");
        assert_eq!(end, mp4.display[last]);
        // Frames with no keyframe between them share one run.
        assert_eq!(mp4.plan(&[0, 1]).unwrap().len(), 1);
    }

    #[test]
    fn the_pixel_cap_is_checked_before_decoding() {
        let limits = Limits { max_video_pixels: 48 * 32 * 2, ..Limits::default() };
        let mp4 = Mp4::parse(SEED, &limits).unwrap();
        let all: Vec<usize> = (0..mp4.frame_count()).collect();
        let e = mp4.decode_each(&all, &limits, |_, _| panic!("decoded past the cap")).unwrap_err();
        assert!(e.to_string().contains("keyframes closer together"), "{e}");
    }

    #[test]
    fn found_by_fuzzing_a_chunk_of_no_samples_is_refused_not_divided_by() {
        let found = include_bytes!("../../fuzz/regressions/decode_mp4/stsc-zero-samples-per-chunk.mp4");
        let e = Mp4::parse(found, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("sample-to-chunk table (stsc)"), "{e}");
        // Samples past the end of the file are refused when the tables are read.
        let sizes = Sizes { fixed: 100, each: &[] };
        let e = locate(&sizes, &[0, 150], &[(1, 1)], 2, 200).unwrap_err();
        assert!(e.to_string().contains("sample 2 (100 bytes at byte 150) lies outside"), "{e}");
        assert_eq!(locate(&sizes, &[0], &[(1, 2)], 2, 200).unwrap(), [(0, 100), (100, 100)]);
    }

    #[test]
    fn found_by_fuzzing_a_keyframe_numbered_0_is_ignored() {
        let found = include_bytes!("../../fuzz/regressions/decode_mp4/keyframe-numbered-0.mp4");
        let mp4 = Mp4::parse(found, &Limits::default()).unwrap();
        assert!(mp4.sync.as_ref().is_some_and(|s| s.iter().all(|&n| n >= 1)), "{:?}", mp4.sync);
        let all: Vec<usize> = (0..mp4.frame_count()).collect();
        let _ = mp4.decode_each(&all, &Limits::default(), |_, _| {});
    }

    #[test]
    fn found_by_fuzzing_a_nested_box_of_size_0_is_refused_not_looped_on() {
        let found = include_bytes!("../../fuzz/regressions/demux_mp4/nested-box-of-size-0.mp4");
        assert!(matches!(Mp4::parse(found, &Limits::default()), Err(DecodeError::Malformed(_))));
        // The `dref` in a `dinf` is walked by entry count, which a size-0 entry kept looping.
        let found = include_bytes!("../../fuzz/regressions/demux_mp4/dref-entry-of-size-0.mp4");
        let e = Mp4::parse(found, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("inside another"), "{e}");
        // The same in a whole file: the seed with its `stss` box's size set to 0.
        let mut file = SEED.to_vec();
        let at = file.windows(4).position(|w| w == b"stss").unwrap() - 4;
        file[at..at + 4].fill(0);
        let e = Mp4::parse(&file, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("'stss' box inside another has size 0"), "{e}");
    }
}
