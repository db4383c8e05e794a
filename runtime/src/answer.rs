//! A guest's answer: checked against what the guest declared before the host trusts it.

use std::time::Duration;

use crate::bindings::motion::guest::types as wit;
use crate::guest::LoadedGuest;

/// A guest's answer, checked.
#[derive(Debug, Clone)]
pub struct Classified {
    pub label: String,
    pub score: f32,
    pub top_k: Vec<(String, f32)>,
    pub frames_total: u32,
    pub frames_used: u32,
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
pub(crate) fn result_size(c: &wit::Classification) -> usize {
    let entry = |label: &str| label.len() + 4;
    entry(&c.label) + c.top_k.iter().map(|e| entry(&e.label)).sum::<usize>() + 8
}

/// Checks a guest's answer against what it promised: labels it declared, a best-first top-k of
/// the asked size with finite probabilities, and a plausible frame count.
pub(crate) fn check_answer(
    guest: &LoadedGuest,
    c: wit::Classification,
    top_k: u32,
    timings: StageTimings,
    batch_size: usize,
) -> Result<Classified, String> {
    let expected = (top_k as usize).min(guest.info.labels.len());
    if c.top_k.len() != expected {
        return Err(format!("top-k has {} entries; {expected} were asked for", c.top_k.len()));
    }
    for entry in &c.top_k {
        if !guest.info.labels.contains(&entry.label) {
            return Err(format!("label '{:.64}' is not one of its declared labels", entry.label));
        }
        if !(entry.score.is_finite() && (0.0..=1.0).contains(&entry.score)) {
            return Err(format!("score {} of '{}' is not a probability", entry.score, entry.label));
        }
    }
    if c.top_k.windows(2).any(|w| w[0].score < w[1].score) {
        return Err("top-k is not ordered best first".into());
    }
    if c.top_k.first().is_some_and(|best| best.label != c.label || best.score != c.score) {
        return Err("label and score differ from the first top-k entry".into());
    }
    if c.frames_used == 0 || c.frames_used > c.frames_total {
        return Err(format!(
            "frames_used {} is outside 1..=frames_total ({})",
            c.frames_used, c.frames_total
        ));
    }
    Ok(Classified {
        label: c.label,
        score: c.score,
        top_k: c.top_k.into_iter().map(|e| (e.label, e.score)).collect(),
        frames_total: c.frames_total,
        frames_used: c.frames_used,
        timings,
        batch_size,
    })
}
