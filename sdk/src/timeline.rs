//! A clip cut into a timeline: consecutive, non-overlapping windows from its first frame, each
//! classified on its own with the contract's sampling within it.

use crate::preprocess::{FRAMES, sample_indices};

/// When each frame of a timed clip is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Each frame's time in seconds from the first, ascending.
    pub starts: Vec<f64>,
    /// When the last frame ends: the clip's duration.
    pub end: f64,
}

/// How to cut a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Segmentation {
    /// Windows of this many seconds (timed media only).
    Seconds(f64),
    /// Windows of this many frames.
    Frames(u32),
}

/// Shortest and longest window in seconds.
pub const SECONDS: std::ops::RangeInclusive<f64> = 0.5..=60.0;

/// One window: frames `start..end`, and its span in seconds when the clip is timed.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
}

impl Window {
    /// The contract's 8 frames within the window, as frame numbers in the clip.
    pub fn sample_indices(&self) -> [usize; FRAMES] {
        sample_indices(self.end - self.start).map(|i| self.start + i)
    }
}

/// Cuts a clip of `frames` frames into windows, at most `max` of them. A last window shorter
/// than half a window joins the one before it; a window of seconds with no frame in it (a gap in
/// a variable-rate clip) is left out. The error says what to ask instead.
pub fn windows(
    frames: usize,
    timing: Option<&Timing>,
    how: Segmentation,
    max: usize,
) -> Result<Vec<Window>, String> {
    let mut windows = match how {
        Segmentation::Frames(0) => return Err("segment_frames must be at least 1".into()),
        Segmentation::Frames(n) => by_frames(frames, n as usize, timing),
        Segmentation::Seconds(s) if !SECONDS.contains(&s) => {
            return Err(format!("segment must be {} to {} seconds; got {s}", SECONDS.start(), SECONDS.end()));
        }
        Segmentation::Seconds(s) => {
            let timing = timing.ok_or_else(|| {
                "segment (seconds) needs timed media (MP4, Y4M with a frame rate, GIF with frame delays); \
                 these frames have no times: use segment_frames"
                    .to_string()
            })?;
            by_seconds(timing, s)
        }
    };
    windows.retain(|w| w.end > w.start);
    if windows.len() > max {
        let what = match how {
            Segmentation::Frames(n) => format!("{n} frames"),
            Segmentation::Seconds(s) => format!("{s} s"),
        };
        return Err(format!(
            "the clip makes {} windows of {what}; this server takes at most {max} per request \
             (its cap, from the per-request limits): ask for longer windows",
            windows.len()
        ));
    }
    Ok(windows)
}

fn by_frames(frames: usize, n: usize, timing: Option<&Timing>) -> Vec<Window> {
    let mut bounds: Vec<(usize, usize)> = (0..frames).step_by(n).map(|s| (s, (s + n).min(frames))).collect();
    if let [.., before, last] = bounds.as_mut_slice()
        && 2 * (last.1 - last.0) < n
    {
        before.1 = last.1;
        bounds.pop();
    }
    let time = |frame: usize| timing.map(|t| t.starts.get(frame).copied().unwrap_or(t.end));
    bounds
        .into_iter()
        .map(|(start, end)| Window { start, end, start_s: time(start), end_s: time(end) })
        .collect()
}

fn by_seconds(timing: &Timing, s: f64) -> Vec<Window> {
    // Window k holds the frames shown from k·s to (k+1)·s; the last ends with the clip.
    let count = ((timing.end / s).ceil() as usize).max(1);
    let window_of = |t: f64| ((t / s + 1e-9).floor() as usize).min(count - 1);
    let mut windows: Vec<Window> = (0..count)
        .map(|k| Window {
            start: usize::MAX,
            end: 0,
            start_s: Some(k as f64 * s),
            end_s: Some(((k + 1) as f64 * s).min(timing.end)),
        })
        .collect();
    for (frame, &t) in timing.starts.iter().enumerate() {
        let w = &mut windows[window_of(t)];
        w.start = w.start.min(frame);
        w.end = w.end.max(frame + 1);
    }
    if count > 1 && timing.end - (count - 1) as f64 * s < s / 2.0 {
        let last = windows.pop().expect("count > 1");
        let before = windows.last_mut().expect("count > 1");
        before.end_s = last.end_s;
        if last.end > last.start {
            before.start = before.start.min(last.start);
            before.end = before.end.max(last.end);
        }
    }
    windows.retain(|w| w.start != usize::MAX);
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(frames: usize, fps: f64) -> Timing {
        Timing { starts: (0..frames).map(|i| i as f64 / fps).collect(), end: frames as f64 / fps }
    }

    fn spans(ws: &[Window]) -> Vec<(usize, usize)> {
        ws.iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn a_minute_in_two_second_windows_is_thirty_windows() {
        let t = steady(1500, 25.0);
        let ws = windows(1500, Some(&t), Segmentation::Seconds(2.0), 100).unwrap();
        assert_eq!(ws.len(), 30);
        assert_eq!((ws[0].start, ws[0].end, ws[0].start_s, ws[0].end_s), (0, 50, Some(0.0), Some(2.0)));
        assert_eq!((ws[29].start, ws[29].end, ws[29].end_s), (1450, 1500, Some(60.0)));
        assert!(ws.windows(2).all(|p| p[0].end == p[1].start));
    }

    #[test]
    fn a_short_last_window_joins_the_one_before() {
        // 5.8 s in 2 s windows: the last is 1.8 s, kept; 5.8 s in 2.5 s: the last is 0.8 s, joined.
        let t = steady(145, 25.0);
        assert_eq!(
            spans(&windows(145, Some(&t), Segmentation::Seconds(2.0), 9).unwrap()),
            [(0, 50), (50, 100), (100, 145)]
        );
        let ws = windows(145, Some(&t), Segmentation::Seconds(2.5), 9).unwrap();
        assert_eq!(spans(&ws), [(0, 63), (63, 145)]);
        assert_eq!(ws[1].end_s, Some(5.8));
        // Frames: 10 in 4s is 4, 4, 2 (half: kept); 9 in 4s is 4, 5.
        assert_eq!(spans(&windows(10, None, Segmentation::Frames(4), 9).unwrap()), [(0, 4), (4, 8), (8, 10)]);
        assert_eq!(spans(&windows(9, None, Segmentation::Frames(4), 9).unwrap()), [(0, 4), (4, 9)]);
        // One window longer than the clip is the whole clip.
        assert_eq!(spans(&windows(3, None, Segmentation::Frames(8), 9).unwrap()), [(0, 3)]);
    }

    #[test]
    fn untimed_media_cannot_be_cut_by_seconds() {
        let e = windows(10, None, Segmentation::Seconds(2.0), 9).unwrap_err();
        assert!(e.contains("segment_frames"), "{e}");
        let untimed = windows(10, None, Segmentation::Frames(5), 9).unwrap();
        assert_eq!(untimed[0].start_s, None);
    }

    #[test]
    fn bounds_and_the_cap_are_named() {
        let t = steady(100, 10.0);
        assert!(windows(100, Some(&t), Segmentation::Seconds(0.4), 99).unwrap_err().contains("0.5 to 60"));
        assert!(windows(100, Some(&t), Segmentation::Seconds(61.0), 99).unwrap_err().contains("0.5 to 60"));
        assert!(windows(100, None, Segmentation::Frames(0), 99).unwrap_err().contains("at least 1"));
        let e = windows(100, Some(&t), Segmentation::Seconds(0.5), 19).unwrap_err();
        assert!(e.contains("20 windows") && e.contains("at most 19"), "{e}");
    }

    #[test]
    fn a_gap_in_a_variable_rate_clip_leaves_no_empty_window() {
        let t = Timing { starts: vec![0.0, 0.5, 5.0, 5.5], end: 6.0 };
        let ws = windows(4, Some(&t), Segmentation::Seconds(1.0), 9).unwrap();
        assert_eq!(spans(&ws), [(0, 2), (2, 4)]);
        assert_eq!(ws[1].start_s, Some(5.0));
    }

    #[test]
    fn each_window_is_sampled_by_the_contract_within_it() {
        let w = Window { start: 50, end: 100, start_s: None, end_s: None };
        let s = w.sample_indices();
        assert_eq!((s[0], s[7]), (50, 99));
    }
}
