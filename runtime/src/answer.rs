//! A guest's answer: checked against what the guest declared before the host trusts it.

use std::time::Duration;

use crate::guest::LoadedGuest;
use crate::world::Answer;
pub use crate::world::Segment;

/// A guest's answer, checked.
#[derive(Debug, Clone)]
pub struct Classified {
    pub label: String,
    pub score: f32,
    pub top_k: Vec<(String, f32)>,
    pub frames_total: u32,
    pub frames_used: u32,
    /// The timeline's windows in time order, when the request asked for one.
    pub segments: Vec<Segment>,
    pub timings: StageTimings,
    /// Rows in the largest forward pass its `compute` calls ran in (other requests' included).
    pub batch_size: usize,
}

/// Where one request's guest time went, split at its wasi:nn `compute` calls.
#[derive(Debug, Clone, Default)]
pub struct StageTimings {
    /// Making the store and instantiating the guest: the first part of `preprocess`.
    pub instantiate: Duration,
    pub preprocess: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

/// Bytes in a guest's result: its strings and numbers.
pub(crate) fn result_size(c: &Answer) -> usize {
    let entries = |top: &[(String, f32)]| top.iter().map(|(label, _)| label.len() + 4).sum::<usize>();
    let segment = |s: &Segment| SEGMENT_FIXED_BYTES + s.label.len() + entries(&s.top_k);
    c.label.len() + 4 + entries(&c.top_k) + 8 + c.segments.iter().map(segment).sum::<usize>()
}

/// Bytes a segment takes besides its labels: frames, times and its score.
pub(crate) const SEGMENT_FIXED_BYTES: usize = 4 + 4 + 9 + 9 + 4;

/// Checks a guest's answer against what it promised: labels it declared, a best-first top-k of
/// the asked size with finite probabilities, a plausible frame count, and, for a timeline, at
/// most `max_segments` windows of those frames in time order, each checked like the whole.
pub(crate) fn check_answer(
    guest: &LoadedGuest,
    c: Answer,
    top_k: u32,
    max_segments: Option<u32>,
    timings: StageTimings,
    batch_size: usize,
) -> Result<Classified, String> {
    check_ranking(guest, &c.label, c.score, &c.top_k, top_k)?;
    if c.frames_used == 0 || c.frames_used > c.frames_total {
        return Err(format!(
            "frames_used {} is outside 1..=frames_total ({})",
            c.frames_used, c.frames_total
        ));
    }
    match max_segments {
        None if !c.segments.is_empty() => return Err("it returned segments; none were asked for".into()),
        Some(_) if c.segments.is_empty() => {
            return Err("it returned no segments; a timeline was asked for".into());
        }
        Some(max) if c.segments.len() > max as usize => {
            return Err(format!("it returned {} segments; the cap is {max}", c.segments.len()));
        }
        _ => {}
    }
    let mut next_frame = 0;
    for (i, s) in c.segments.iter().enumerate() {
        if s.start_frame < next_frame || s.end_frame <= s.start_frame || s.end_frame > c.frames_total {
            return Err(format!(
                "segment {i} covers frames {}..{}: not after the one before it within the {} frames",
                s.start_frame, s.end_frame, c.frames_total
            ));
        }
        next_frame = s.end_frame;
        check_ranking(guest, &s.label, s.score, &s.top_k, top_k).map_err(|e| format!("segment {i}: {e}"))?;
    }
    Ok(Classified {
        label: c.label,
        score: c.score,
        top_k: c.top_k,
        frames_total: c.frames_total,
        frames_used: c.frames_used,
        segments: c
            .segments
            .into_iter()
            .map(|s| Segment {
                start_s: s.start_s.filter(|t| t.is_finite()),
                end_s: s.end_s.filter(|t| t.is_finite()),
                ..s
            })
            .collect(),
        timings,
        batch_size,
    })
}

/// A best label, its score and a top-k: declared labels, probabilities, best first, as many
/// as asked.
fn check_ranking(
    guest: &LoadedGuest,
    label: &str,
    score: f32,
    top: &[(String, f32)],
    top_k: u32,
) -> Result<(), String> {
    let expected = (top_k as usize).min(guest.info.labels.len());
    if top.len() != expected {
        return Err(format!("top-k has {} entries; {expected} were asked for", top.len()));
    }
    for (entry, score) in top {
        if !guest.info.labels.contains(entry) {
            return Err(format!("label '{entry:.64}' is not one of its declared labels"));
        }
        if !(score.is_finite() && (0.0..=1.0).contains(score)) {
            return Err(format!("score {score} of '{entry}' is not a probability"));
        }
    }
    if top.windows(2).any(|w| w[0].1 < w[1].1) {
        return Err("top-k is not ordered best first".into());
    }
    if top.first().is_some_and(|best| best.0 != label || best.1 != score) {
        return Err("label and score differ from the first top-k entry".into());
    }
    Ok(())
}
