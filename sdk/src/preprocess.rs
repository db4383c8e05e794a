//! From decoded frames to the model input, exactly as the model contract says: 8 frames sampled
//! uniformly (first and last included), each luma resized to 112×112 over the whole frame with
//! an antialiased triangle filter, scaled to [0,1] and mapped by `(x - 0.5) / 0.25`.

/// Frames in one model input (its channels).
pub const FRAMES: usize = 8;
/// Side of each resized frame.
pub const SIZE: u32 = 112;
/// Elements in one model input: `[1, FRAMES, SIZE, SIZE]`.
pub const INPUT_LEN: usize = FRAMES * (SIZE as usize) * (SIZE as usize);
/// Luma mean and spread used to normalise, as in training.
const MEAN: f32 = 0.5;
const STD: f32 = 0.25;

/// One decoded frame: luma in [0, 1], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<f32>,
}

impl Frame {
    /// A frame from luma values in [0, 1]; `luma.len()` must be `width * height`.
    pub fn new(width: u32, height: u32, luma: Vec<f32>) -> Self {
        debug_assert_eq!(luma.len(), width as usize * height as usize);
        Frame { width, height, luma }
    }
}

/// Which of a clip's `n` frames feed the model: frame `i` of the input is `round(i·(n−1)/7)`.
/// A clip shorter than 8 frames repeats frames. `n` must be at least 1.
pub fn sample_indices(n: usize) -> [usize; FRAMES] {
    let last = n.saturating_sub(1);
    let steps = FRAMES - 1;
    // i·last/steps never has a fractional part of exactly one half (steps is odd), so rounding
    // half up in integers is exact.
    std::array::from_fn(|i| (2 * i * last + steps) / (2 * steps))
}

/// BT.601 luma of full-range RGB values in [0, 1].
#[inline]
pub fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Resizes a frame to `SIZE`×`SIZE` with a triangle filter whose support widens with the
/// shrink factor (Pillow's `resize(..., BILINEAR)`), so shrinking HD frames does not alias.
///
/// Separable: the vertical pass first, as whole-row multiply-adds that vectorise, then the
/// horizontal pass over the `SIZE` rows left.
pub fn resize(frame: &Frame) -> Vec<f32> {
    if frame.width == SIZE && frame.height == SIZE {
        return frame.luma.clone();
    }
    let (width, height) = (frame.width as usize, frame.height as usize);
    let out = SIZE as usize;

    let mut rows = vec![0.0f32; out * width];
    for (y, taps) in triangle_taps(height, out).iter().enumerate() {
        let row = &mut rows[y * width..(y + 1) * width];
        for (k, &weight) in taps.weights.iter().enumerate() {
            let source = &frame.luma[(taps.first + k) * width..(taps.first + k + 1) * width];
            for (acc, &value) in row.iter_mut().zip(source) {
                *acc += weight * value;
            }
        }
    }

    let columns = triangle_taps(width, out);
    let mut resized = Vec::with_capacity(out * out);
    for row in rows.chunks_exact(width) {
        resized.extend(columns.iter().map(|taps| {
            let source = &row[taps.first..taps.first + taps.weights.len()];
            source.iter().zip(&taps.weights).map(|(&v, &w)| v * w).sum::<f32>()
        }));
    }
    resized
}

/// The source samples one output sample reads, and their weights (summing to 1).
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The triangle filter's taps for resizing `from` samples to `to`: output sample `i` is centred
/// on source position `(i + 0.5)·from/to`, and when shrinking the triangle widens by the
/// shrink factor, as Pillow's and the `image` crate's filters do.
fn triangle_taps(from: usize, to: usize) -> Vec<Taps> {
    let ratio = from as f32 / to as f32;
    let scale = ratio.max(1.0);
    let support = scale;
    (0..to)
        .map(|i| {
            let centre = (i as f32 + 0.5) * ratio;
            let first = ((centre - support).floor().max(0.0) as usize).min(from - 1);
            let end = ((centre + support).ceil() as usize).clamp(first + 1, from);
            let mut weights: Vec<f32> =
                (first..end).map(|j| (1.0 - ((j as f32 + 0.5 - centre) / scale).abs()).max(0.0)).collect();
            let sum: f32 = weights.iter().sum();
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            } else {
                // Unreachable for a triangle (the nearest sample always weighs > 0); keep the
                // nearest sample rather than dividing by zero.
                weights.iter_mut().for_each(|w| *w = 0.0);
                let nearest = ((centre as usize).min(end - 1)).max(first) - first;
                weights[nearest] = 1.0;
            }
            Taps { first, weights }
        })
        .collect()
}

/// Normalises one resized luma value as in training.
#[inline]
pub fn normalise(x: f32) -> f32 {
    (x - MEAN) / STD
}

/// Builds the model input from the clip's sampled frames, already resized: one normalised plane
/// per index, in order (`[1, 8, 112, 112]` for the 8 indices of [`sample_indices`]).
///
/// `planes` holds each distinct sampled frame once, resized to `SIZE`×`SIZE` and keyed by its
/// frame number, so a repeated frame is resized once.
pub fn model_input(indices: &[usize], planes: &[(usize, Vec<f32>)]) -> Result<Vec<f32>, String> {
    let mut input = Vec::with_capacity(indices.len() * (SIZE * SIZE) as usize);
    for &index in indices {
        let (_, plane) = planes
            .iter()
            .find(|(i, _)| *i == index)
            .ok_or_else(|| format!("frame {index} was not decoded"))?;
        input.extend(plane.iter().map(|&x| normalise(x)));
    }
    Ok(input)
}

/// The distinct frame numbers in `indices`, ascending.
pub fn distinct(indices: &[usize]) -> Vec<usize> {
    let mut unique = indices.to_vec();
    unique.sort_unstable();
    unique.dedup();
    unique
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_contract() {
        // (frames in clip, expected indices): round(i·(n−1)/7)
        let cases: &[(usize, [usize; 8])] = &[
            (1, [0, 0, 0, 0, 0, 0, 0, 0]),
            (2, [0, 0, 0, 0, 1, 1, 1, 1]),
            (3, [0, 0, 1, 1, 1, 1, 2, 2]),
            (8, [0, 1, 2, 3, 4, 5, 6, 7]),
            (15, [0, 2, 4, 6, 8, 10, 12, 14]),
            (16, [0, 2, 4, 6, 9, 11, 13, 15]),
            (42, [0, 6, 12, 18, 23, 29, 35, 41]),
            (100_000, [0, 14286, 28571, 42857, 57142, 71428, 85713, 99999]),
        ];
        for (n, expected) in cases {
            assert_eq!(&sample_indices(*n), expected, "n = {n}");
        }
    }

    #[test]
    fn sampling_always_includes_first_and_last() {
        for n in 1..500 {
            let idx = sample_indices(n);
            assert_eq!(idx[0], 0);
            assert_eq!(idx[7], n - 1);
            assert!(idx.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn distinct_counts_frames_used() {
        assert_eq!(distinct(&sample_indices(1)), vec![0]);
        assert_eq!(distinct(&sample_indices(3)), vec![0, 1, 2]);
        assert_eq!(distinct(&sample_indices(42)).len(), 8);
    }

    #[test]
    fn luma_uses_bt601_weights() {
        assert!((luma(1.0, 0.0, 0.0) - 0.299).abs() < 1e-7);
        assert!((luma(0.0, 1.0, 0.0) - 0.587).abs() < 1e-7);
        assert!((luma(0.0, 0.0, 1.0) - 0.114).abs() < 1e-7);
        assert!((luma(1.0, 1.0, 1.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn normalisation_maps_the_luma_range() {
        assert_eq!(normalise(0.0), -2.0);
        assert_eq!(normalise(0.5), 0.0);
        assert_eq!(normalise(1.0), 2.0);
        assert_eq!(normalise(0.75), 1.0);
    }

    #[test]
    fn shrinking_widens_the_triangle_filter() {
        // 224×1 → 112×1 is a shrink by 2, so the triangle spans 2 source pixels each side.
        // Output pixel 0 is centred on source x = 1.0; source pixels 0, 1, 2 (centres 0.5,
        // 1.5, 2.5) weigh 1−|d|/2 = 0.75, 0.75, 0.25. With only pixel 1 lit, the output is
        // 0.75 / 1.75 = 3/7. Plain bilinear would give 0.5.
        let mut luma = vec![0.0; 224];
        luma[1] = 1.0;
        let out = resize(&Frame::new(224, 1, luma));
        assert_eq!(out.len(), (SIZE * SIZE) as usize);
        assert!((out[0] - 3.0 / 7.0).abs() < 1e-5, "got {}", out[0]);
        // Every row is the same, since the source has one row.
        assert!((out[SIZE as usize] - out[0]).abs() < 1e-6);
    }

    #[test]
    fn resize_matches_the_image_crates_triangle_filter() {
        use image::imageops::{self, FilterType};
        use image::{ImageBuffer, Luma};
        for (w, h) in [(320, 180), (1920, 1080), (7, 300), (50, 50), (113, 111), (112, 40)] {
            let luma: Vec<f32> = (0..w * h)
                .map(|i| ((u32::wrapping_mul(i, 7919).wrapping_add(i / w * 31)) % 256) as f32 / 255.0)
                .collect();
            let view: ImageBuffer<Luma<f32>, &[f32]> = ImageBuffer::from_raw(w, h, luma.as_slice()).unwrap();
            let expected = imageops::resize(&view, SIZE, SIZE, FilterType::Triangle).into_raw();
            let got = resize(&Frame::new(w, h, luma));
            let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{w}x{h}: off by {worst}");
        }
    }

    #[test]
    fn a_constant_frame_stays_constant_at_any_size() {
        for (w, h) in [(1, 1), (7, 300), (1920, 1080), (112, 112), (50, 50)] {
            let out = resize(&Frame::new(w, h, vec![0.6; (w * h) as usize]));
            assert!(out.iter().all(|&x| (x - 0.6).abs() < 1e-5), "{w}x{h}");
        }
    }

    #[test]
    fn a_frame_of_the_model_size_passes_unchanged() {
        let luma: Vec<f32> = (0..112 * 112).map(|i| (i % 256) as f32 / 255.0).collect();
        assert_eq!(resize(&Frame::new(112, 112, luma.clone())), luma);
    }

    #[test]
    fn model_input_puts_frame_i_in_channel_i() {
        // Three frames of constant luma 0, 0.5 and 1; sampled as [0,0,1,1,1,1,2,2].
        let planes: Vec<(usize, Vec<f32>)> =
            (0..3).map(|i| (i, resize(&Frame::new(4, 4, vec![i as f32 * 0.5; 16])))).collect();
        let indices = sample_indices(3);
        let input = model_input(&indices, &planes).unwrap();
        assert_eq!(input.len(), INPUT_LEN);
        let plane = (SIZE * SIZE) as usize;
        let channel_values: Vec<f32> = (0..FRAMES).map(|c| input[c * plane]).collect();
        assert_eq!(channel_values, vec![-2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0]);
    }

    #[test]
    fn model_input_reports_a_missing_frame() {
        let err = model_input(&sample_indices(2), &[(0, vec![0.0; INPUT_LEN / FRAMES])]).unwrap_err();
        assert!(err.contains("frame 1"), "{err}");
    }
}
