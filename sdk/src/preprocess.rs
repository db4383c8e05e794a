//! From decoded frames to the model input, exactly as the model contract says: 8 frames sampled
//! uniformly (first and last included), letterbox and pillarbox bars cropped away (the same crop
//! for the 8, found from them: contract 1.1), each luma resized to 112×112 over what is left with
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
/// A line (row or column) is a bar when, in every frame, its mean luma is at most `BAR_MEAN`
/// and its values stray from that mean by at most `BAR_SPREAD` on average, and its mean moves by
/// at most `BAR_DRIFT` across the frames: flat, dark and still, as a matte is and as scene
/// content, even a dark one, rarely is over a whole line. The training pipeline's
/// `preprocess.py` holds the same numbers.
const BAR_MEAN: f32 = 0.1;
const BAR_SPREAD: f32 = 0.02;
const BAR_DRIFT: f32 = 0.02;

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

/// What to cut from a frame before resizing: `rows` from the top and as many from the bottom,
/// `columns` from the left and as many from the right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crop {
    pub rows: u32,
    pub columns: u32,
}

impl Crop {
    /// The whole frame.
    pub const NONE: Crop = Crop { rows: 0, columns: 0 };
}

/// Finds the letterbox and pillarbox bars of a clip's frames, shown one at a time
/// ([`Bars::observe`]), without keeping them: what [`Bars::crop`] gives is what the training
/// pipeline's `preprocess.bars` gives for the same frames.
///
/// A bar is a line at the frame's edge that is flat, dark and still in every frame (see
/// `BAR_MEAN`). Bars are cut in pairs, as many lines from each end as both ends have (a dark sky
/// above a lit street is not a letterbox), when that is at least 2 and leaves at least a quarter
/// of the frame; frames of different sizes are not cropped. Only the lines from each edge inward
/// are read, and only while they are bars, so a frame without bars costs four lines.
#[derive(Debug, Clone, Default)]
pub struct Bars {
    size: Option<(u32, u32)>,
    mixed: bool,
    /// Top, bottom, left, right.
    ends: [End; 4],
}

/// One edge: how many lines from it are bars in every frame so far (up to one more than could be
/// cut), and each such line's lowest and highest mean over the frames.
#[derive(Debug, Clone, Default)]
struct End {
    run: usize,
    means: Vec<(f32, f32)>,
}

impl Bars {
    pub fn new() -> Self {
        Bars::default()
    }

    /// Takes one frame's lines into account.
    pub fn observe(&mut self, frame: &Frame) {
        let size = (frame.width, frame.height);
        match self.size {
            None => {
                self.size = Some(size);
                for (end, lines) in self.ends.iter_mut().zip([size.1, size.1, size.0, size.0]) {
                    end.run = most(lines as usize) + 1;
                }
            }
            Some(first) if first != size => self.mixed = true,
            Some(_) => {}
        }
        if self.mixed {
            return;
        }
        for (side, end) in self.ends.iter_mut().enumerate() {
            let mut depth = 0;
            while depth < end.run {
                let Some(mean) = bar_mean(frame, side, depth) else { break };
                match end.means.get_mut(depth) {
                    Some((lo, hi)) => (*lo, *hi) = (lo.min(mean), hi.max(mean)),
                    None => end.means.push((mean, mean)),
                }
                depth += 1;
            }
            end.run = depth;
            end.means.truncate(depth);
        }
    }

    /// Whether the frames seen so far leave room for a crop: false once no edge pair can have
    /// bars, when the rest of the clip's frames can be resized as they come.
    pub fn possible(&self) -> bool {
        let [top, bottom, left, right] = &self.ends;
        self.size.is_none()
            || (!self.mixed && (top.run > 0 && bottom.run > 0 || left.run > 0 && right.run > 0))
    }

    /// The crop the frames seen call for.
    pub fn crop(&self) -> Crop {
        let Some((width, height)) = self.size else { return Crop::NONE };
        if self.mixed {
            return Crop::NONE;
        }
        let [top, bottom, left, right] = &self.ends;
        Crop { rows: pair(top, bottom, height as usize), columns: pair(left, right, width as usize) }
    }
}

/// The most lines a pair of bars may take from each end and leave a quarter of `lines`:
/// `4·(lines − 2c) ≥ lines`.
fn most(lines: usize) -> usize {
    3 * lines / 8
}

/// Lines from an end that are bars: flat in every frame (the run) and still across them.
fn still_run(end: &End) -> usize {
    end.means.iter().take(end.run).take_while(|(lo, hi)| hi - lo <= BAR_DRIFT).count()
}

fn pair(a: &End, b: &End, lines: usize) -> u32 {
    let cut = still_run(a).min(still_run(b));
    if cut >= 2 && cut <= most(lines) { cut as u32 } else { 0 }
}

/// The mean of line `depth` from edge `side` (top, bottom, left, right) if it is flat and dark.
fn bar_mean(frame: &Frame, side: usize, depth: usize) -> Option<f32> {
    let (width, height) = (frame.width as usize, frame.height as usize);
    let row = |y: usize| &frame.luma[y * width..(y + 1) * width];
    let (mean, spread) = match side {
        0 => row_stats(row(depth)),
        1 => row_stats(row(height - 1 - depth)),
        2 => column_stats(frame, depth),
        _ => column_stats(frame, width - 1 - depth),
    };
    (mean <= BAR_MEAN && spread <= BAR_SPREAD).then_some(mean)
}

fn row_stats(line: &[f32]) -> (f32, f32) {
    let n = line.len() as f32;
    let mean = line.iter().sum::<f32>() / n;
    (mean, line.iter().map(|v| (v - mean).abs()).sum::<f32>() / n)
}

fn column_stats(frame: &Frame, x: usize) -> (f32, f32) {
    let column = || frame.luma.iter().skip(x).step_by(frame.width as usize);
    let n = frame.height as f32;
    let mean = column().sum::<f32>() / n;
    (mean, column().map(|v| (v - mean).abs()).sum::<f32>() / n)
}

/// Resizes a frame to `SIZE`×`SIZE` with a triangle filter whose support widens with the
/// shrink factor (Pillow's `resize(..., BILINEAR)`), so shrinking HD frames does not alias.
pub fn resize(frame: &Frame) -> Vec<f32> {
    resize_within(frame, Crop::NONE)
}

/// Resizes what `crop` leaves of a frame to `SIZE`×`SIZE`, as [`resize`] does a whole frame.
pub fn resize_within(frame: &Frame, crop: Crop) -> Vec<f32> {
    Resizer::new(frame.width, frame.height, crop).resize(frame)
}

/// Resizes frames of one size, cropped alike, to `SIZE`×`SIZE`: the filter's taps are worked
/// out once for all of them rather than for each frame. In the default guest they took 0.07 ms
/// of the benchmark's Y4M clip's 0.8 ms, most of it in their small allocations.
///
/// Separable, and both passes are whole-line multiply-adds, which vectorise: the vertical pass
/// over the source rows, then the horizontal pass over the columns of the `SIZE` rows left,
/// transposed so that each column is a line. A sum of a few taps per output sample, the plain
/// way to write the horizontal pass, does not vectorise: in the default guest it took most of
/// the resize, and preprocessing the benchmark's Y4M clip took 2.6 ms against 1.6 ms now. Each
/// sample's taps are added in the same order either way, so the result is the same to the bit.
#[derive(Debug)]
pub struct Resizer {
    width: u32,
    height: u32,
    crop: Crop,
    /// Empty when what the crop leaves is already `SIZE`×`SIZE`.
    row_taps: Vec<Taps>,
    column_taps: Vec<Taps>,
    /// The passes' working planes, written whole for each frame and so reused: in a guest,
    /// three fresh zeroed planes a frame were 3 MB of `memory.fill` for the Y4M clip.
    vertical: Vec<f32>,
    transposed: Vec<f32>,
    horizontal: Vec<f32>,
}

impl Resizer {
    /// A resizer for frames of `width`×`height` that `crop` leaves at least one line of each way.
    pub fn new(width: u32, height: u32, crop: Crop) -> Self {
        let (kept_width, kept_height) =
            ((width - 2 * crop.columns) as usize, (height - 2 * crop.rows) as usize);
        let out = SIZE as usize;
        // What the crop leaves at the model's size is taken as it is: no taps, no planes.
        let resized = (kept_width, kept_height) != (out, out);
        let plane = |len: usize| if resized { vec![0.0; len] } else { Vec::new() };
        Resizer {
            width,
            height,
            crop,
            row_taps: if resized { triangle_taps(kept_height, out) } else { Vec::new() },
            column_taps: if resized { triangle_taps(kept_width, out) } else { Vec::new() },
            vertical: plane(out * kept_width),
            transposed: plane(out * kept_width),
            horizontal: plane(out * out),
        }
    }

    /// Whether it resizes frames of `width`×`height` cropped by `crop`.
    pub fn fits(&self, width: u32, height: u32, crop: Crop) -> bool {
        (self.width, self.height, self.crop) == (width, height, crop)
    }

    /// The frame, cropped and resized. It must be of the size the resizer was made for.
    pub fn resize(&mut self, frame: &Frame) -> Vec<f32> {
        assert!(
            (frame.width, frame.height) == (self.width, self.height),
            "a {}x{} frame given to a resizer for {}x{}",
            frame.width,
            frame.height,
            self.width,
            self.height
        );
        let stride = frame.width as usize;
        let (top, left) = (self.crop.rows as usize, self.crop.columns as usize);
        let width = stride - 2 * left;
        let line = |y: usize| &frame.luma[(top + y) * stride + left..(top + y) * stride + left + width];
        let out = SIZE as usize;
        if self.row_taps.is_empty() {
            return (0..out).flat_map(line).copied().collect();
        }

        let Resizer { row_taps, column_taps, vertical, transposed, horizontal, .. } = self;
        for (y, taps) in row_taps.iter().enumerate() {
            weigh_lines(&mut vertical[y * width..(y + 1) * width], taps, line);
        }
        transpose_into(vertical, width, transposed);
        let column = |x: usize| &transposed[x * out..(x + 1) * out];
        for (x, taps) in column_taps.iter().enumerate() {
            weigh_lines(&mut horizontal[x * out..(x + 1) * out], taps, column);
        }
        let mut plane = vec![0.0f32; out * out];
        transpose_into(horizontal, out, &mut plane);
        plane
    }
}

/// Sets `acc` to the sum of the taps' lines, each weighted by its tap, added in tap order from
/// zero, with wasm SIMD: up to four taps at a time, sixteen samples at a time summed over them
/// in registers. LLVM compiles the plain version below, for wasm, to a load and a store of the
/// sums at every tap (and at every tap the epoch check wasmtime puts in each loop); this loads
/// and stores them once every four taps. Each sample's taps are still added in tap order, so the
/// result is the same to the bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn weigh_lines<'a>(acc: &mut [f32], taps: &Taps, line: impl Fn(usize) -> &'a [f32]) {
    let mut groups = taps.weights.chunks_exact(4);
    let (mut first, mut fresh) = (taps.first, true);
    for group in &mut groups {
        weigh_taps::<4>(acc, fresh, group, std::array::from_fn(|k| line(first + k)));
        (first, fresh) = (first + 4, false);
    }
    let rest = groups.remainder();
    match rest.len() {
        1 => weigh_taps::<1>(acc, fresh, rest, [line(first)]),
        2 => weigh_taps::<2>(acc, fresh, rest, std::array::from_fn(|k| line(first + k))),
        3 => weigh_taps::<3>(acc, fresh, rest, std::array::from_fn(|k| line(first + k))),
        _ if fresh => acc.fill(0.0),
        _ => {}
    }
}

/// Adds `N` taps' lines, weighted, to `acc` (to zero when `fresh`, not to what it holds), in
/// order: the body of [`weigh_lines`] in wasm.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn weigh_taps<const N: usize>(acc: &mut [f32], fresh: bool, weights: &[f32], lines: [&[f32]; N]) {
    use core::arch::wasm32::{f32x4_add, f32x4_mul, f32x4_splat, v128, v128_load, v128_store};
    const BLOCK: usize = 16;
    let zero = f32x4_splat(0.0);
    let n = acc.len();
    // What the pointer walk below relies on, checked once here.
    assert!(weights.len() == N && lines.iter().all(|line| line.len() >= n));
    let blocked = n - n % BLOCK;
    let splat: [v128; N] = std::array::from_fn(|k| f32x4_splat(weights[k]));
    let (to, from) = (acc.as_mut_ptr(), lines.map(<[f32]>::as_ptr));
    for start in (0..blocked).step_by(BLOCK) {
        // SAFETY: start + 16 <= n, the length of `acc` and at most that of each line, so every
        // four-value load and store below is within its slice. Unaligned is fine.
        unsafe {
            let at = |p: *const f32, i: usize| v128_load(p.add(start + i).cast::<v128>());
            let sum = |i: usize| if fresh { zero } else { at(to, i) };
            let (mut a, mut b, mut c, mut d) = (sum(0), sum(4), sum(8), sum(12));
            for k in 0..N {
                let weight = splat[k];
                a = f32x4_add(a, f32x4_mul(weight, at(from[k], 0)));
                b = f32x4_add(b, f32x4_mul(weight, at(from[k], 4)));
                c = f32x4_add(c, f32x4_mul(weight, at(from[k], 8)));
                d = f32x4_add(d, f32x4_mul(weight, at(from[k], 12)));
            }
            for (i, sum) in [(0, a), (4, b), (8, c), (12, d)] {
                v128_store(to.add(start + i).cast::<v128>(), sum);
            }
        }
    }
    for (i, sum) in acc.iter_mut().enumerate().skip(blocked) {
        if fresh {
            *sum = 0.0;
        }
        for k in 0..N {
            *sum += weights[k] * lines[k][i];
        }
    }
}

/// Sets `acc` to the sum of the taps' lines, each weighted by its tap, added in tap order from
/// zero.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn weigh_lines<'a>(acc: &mut [f32], taps: &Taps, line: impl Fn(usize) -> &'a [f32]) {
    acc.fill(0.0);
    for (k, &weight) in taps.weights.iter().enumerate() {
        for (sum, &value) in acc.iter_mut().zip(line(taps.first + k)) {
            *sum += weight * value;
        }
    }
}

/// [`transpose_into`] a new vector.
#[cfg(test)]
fn transpose(values: &[f32], width: usize) -> Vec<f32> {
    let mut transposed = vec![0.0f32; values.len()];
    transpose_into(values, width, &mut transposed);
    transposed
}

/// Writes the transpose of `values`, a row-major matrix of rows `width` long, into
/// `transposed`, as long as it, in tiles of 4×4.
fn transpose_into(values: &[f32], width: usize, transposed: &mut [f32]) {
    let height = values.len() / width;
    let (tiled_height, tiled_width) = (height - height % TILE, width - width % TILE);
    transpose_tiles(&values[..width * height], width, (tiled_width, tiled_height), transposed);
    // What the tiles leave: the last rows and the last columns.
    for y in 0..height {
        let xs = if y < tiled_height { tiled_width..width } else { 0..width };
        for x in xs {
            transposed[x * height + y] = values[y * width + x];
        }
    }
}

/// Side of [`transpose_into`]'s tiles: one 128-bit vector of `f32`.
const TILE: usize = 4;

/// The tiles of [`transpose_into`] that cover the first `tiled` columns and rows, with wasm SIMD:
/// four vector loads, eight shuffles and four vector stores a tile, and no bounds check inside
/// the loop. LLVM compiles the plain version below to a load and a store per value for wasm;
/// the shuffles took the default guest's preprocessing of the benchmark's Y4M clip from 1.65 to
/// 1.56 ms, and leaving out the sixteen bounds checks a tile that slicing costs took it from
/// 1.36 to 1.20 ms on another machine (interleaved A/B at one client, the stage less
/// instantiation, p50).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn transpose_tiles(values: &[f32], width: usize, tiled: (usize, usize), transposed: &mut [f32]) {
    use core::arch::wasm32::{i32x4_shuffle, v128, v128_load, v128_store};
    let height = values.len() / width;
    let (tiled_width, tiled_height) = tiled;
    // What the pointer walk below relies on, checked once here rather than by its caller.
    assert!(tiled_width <= width && tiled_height <= height && transposed.len() == values.len());
    assert!(tiled_width % TILE == 0 && tiled_height % TILE == 0);
    let (from, to) = (values.as_ptr(), transposed.as_mut_ptr());
    for y in (0..tiled_height).step_by(TILE) {
        for x in (0..tiled_width).step_by(TILE) {
            // SAFETY: y + 3 < height and x + 3 < width, so row y + i's four values from column
            // x end at most at (height − 1)·width + width, the length of `values`; column x + j's
            // four from row y likewise end within `transposed`, as long. Unaligned is fine.
            unsafe {
                let row = |i: usize| v128_load(from.add((y + i) * width + x).cast::<v128>());
                let (a, b, c, d) = (row(0), row(1), row(2), row(3));
                let (ab_low, ab_high) =
                    (i32x4_shuffle::<0, 4, 1, 5>(a, b), i32x4_shuffle::<2, 6, 3, 7>(a, b));
                let (cd_low, cd_high) =
                    (i32x4_shuffle::<0, 4, 1, 5>(c, d), i32x4_shuffle::<2, 6, 3, 7>(c, d));
                let column = |j: usize, v| v128_store(to.add((x + j) * height + y).cast::<v128>(), v);
                column(0, i32x4_shuffle::<0, 1, 4, 5>(ab_low, cd_low));
                column(1, i32x4_shuffle::<2, 3, 6, 7>(ab_low, cd_low));
                column(2, i32x4_shuffle::<0, 1, 4, 5>(ab_high, cd_high));
                column(3, i32x4_shuffle::<2, 3, 6, 7>(ab_high, cd_high));
            }
        }
    }
}

/// The tiles of [`transpose_into`], plainly.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn transpose_tiles(values: &[f32], width: usize, tiled: (usize, usize), transposed: &mut [f32]) {
    let height = values.len() / width;
    let (tiled_width, tiled_height) = tiled;
    for y in (0..tiled_height).step_by(TILE) {
        for x in (0..tiled_width).step_by(TILE) {
            let rows: [&[f32]; TILE] = std::array::from_fn(|i| &values[(y + i) * width + x..][..TILE]);
            for j in 0..TILE {
                let column: [f32; TILE] = std::array::from_fn(|i| rows[i][j]);
                transposed[(x + j) * height + y..][..TILE].copy_from_slice(&column);
            }
        }
    }
}

/// The source samples one output sample reads, and their weights (summing to 1).
#[derive(Debug)]
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
    extend_model_input(&mut input, indices, planes)?;
    Ok(input)
}

/// [`model_input`] added to the end of `input`, as several inputs laid end to end are built
/// without a copy of each.
pub fn extend_model_input(
    input: &mut Vec<f32>,
    indices: &[usize],
    planes: &[(usize, Vec<f32>)],
) -> Result<(), String> {
    for &index in indices {
        let (_, plane) = planes
            .iter()
            .find(|(i, _)| *i == index)
            .ok_or_else(|| format!("frame {index} was not decoded"))?;
        input.extend(plane.iter().map(|&x| normalise(x)));
    }
    Ok(())
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

    /// The resize written the plain way: a sum of taps per output sample.
    fn resize_by_samples(frame: &Frame) -> Vec<f32> {
        let (width, height) = (frame.width as usize, frame.height as usize);
        let out = SIZE as usize;
        let rows: Vec<f32> = triangle_taps(height, out)
            .iter()
            .flat_map(|taps| {
                (0..width).map(|x| {
                    let column = taps.weights.iter().enumerate();
                    column.map(|(k, &w)| w * frame.luma[(taps.first + k) * width + x]).fold(0.0, |a, b| a + b)
                })
            })
            .collect();
        let columns = triangle_taps(width, out);
        rows.chunks_exact(width)
            .flat_map(|row| {
                columns.iter().map(|taps| {
                    let source = &row[taps.first..taps.first + taps.weights.len()];
                    source.iter().zip(&taps.weights).map(|(&v, &w)| w * v).fold(0.0, |a, b| a + b)
                })
            })
            .collect()
    }

    #[test]
    fn resizing_line_by_line_gives_each_samples_sum_to_the_bit() {
        for (w, h) in [(320, 180), (1920, 1080), (7, 300), (50, 50), (113, 111), (112, 40), (300, 112)] {
            let frame = picture(w, h, w ^ h);
            let (got, expected) = (resize(&frame), resize_by_samples(&frame));
            assert_eq!(got.len(), expected.len());
            assert!(got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "{w}x{h}");
        }
    }

    #[test]
    fn transposing_moves_each_value_across_the_diagonal() {
        for (width, height) in [(1, 1), (4, 4), (5, 3), (3, 9), (8, 12), (13, 6)] {
            let values: Vec<f32> = (0..width * height).map(|i| i as f32).collect();
            let transposed = transpose(&values, width);
            for (y, x) in (0..height).flat_map(|y| (0..width).map(move |x| (y, x))) {
                assert_eq!(
                    transposed[x * height + y],
                    values[y * width + x],
                    "{width}x{height} at ({x}, {y})"
                );
            }
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
    fn a_resizer_used_again_gives_each_frame_its_own_resize_to_the_bit() {
        // Its working planes still hold the frame before when the next one comes.
        let mut resizer = Resizer::new(320, 180, Crop::NONE);
        for seed in [3, 5, 7] {
            let frame = picture(320, 180, seed);
            let (got, expected) = (resizer.resize(&frame), resize_by_samples(&frame));
            assert!(got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "seed {seed}");
        }
        let crop = Crop { rows: 2, columns: 4 };
        assert!(
            resizer.fits(320, 180, Crop::NONE)
                && !resizer.fits(320, 180, crop)
                && !resizer.fits(180, 320, Crop::NONE)
        );
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

    /// A frame of `width`×`height` with a deterministic textured picture (values 0.2..0.8).
    fn picture(width: u32, height: u32, seed: u32) -> Frame {
        let luma = (0..width * height)
            .map(|i| {
                0.2 + 0.6 * ((i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 7) % 256) as f32
                    / 255.0
            })
            .collect();
        Frame::new(width, height, luma)
    }

    fn bars_of(frames: &[Frame]) -> Crop {
        let mut bars = Bars::new();
        frames.iter().for_each(|f| bars.observe(f));
        bars.crop()
    }

    fn fill_rows(frame: &mut Frame, rows: std::ops::Range<u32>, value: f32) {
        let w = frame.width as usize;
        for y in rows {
            frame.luma[y as usize * w..(y as usize + 1) * w].fill(value);
        }
    }

    #[test]
    fn letterbox_and_pillarbox_bars_are_found() {
        let mut letterboxed: Vec<Frame> = (0..8).map(|i| picture(160, 90, i)).collect();
        for f in &mut letterboxed {
            fill_rows(f, 0..12, 0.0);
            fill_rows(f, 78..90, 16.0 / 255.0);
        }
        assert_eq!(bars_of(&letterboxed), Crop { rows: 12, columns: 0 });

        let mut pillarboxed: Vec<Frame> = (0..8).map(|i| picture(160, 90, i)).collect();
        for f in &mut pillarboxed {
            for y in 0..90 {
                f.luma[y * 160..y * 160 + 20].fill(0.0);
                f.luma[y * 160 + 140..(y + 1) * 160].fill(0.0);
            }
        }
        assert_eq!(bars_of(&pillarboxed), Crop { rows: 0, columns: 20 });

        // Uneven bars (a subtitle in the bottom one) are cut by the shorter.
        let mut uneven = letterboxed.clone();
        for f in &mut uneven {
            fill_rows(f, 84..86, 0.9);
        }
        assert_eq!(bars_of(&uneven), Crop { rows: 4, columns: 0 });
    }

    #[test]
    fn dark_scenes_and_one_sided_darkness_are_not_cropped() {
        // Dark but textured: no line is flat.
        let dark: Vec<Frame> = (0..8)
            .map(|i| {
                let f = picture(160, 90, i);
                Frame::new(160, 90, f.luma.iter().map(|v| (v - 0.2) * 0.15).collect())
            })
            .collect();
        assert_eq!(bars_of(&dark), Crop::NONE);
        // Black all over: there is nothing to crop to.
        assert_eq!(bars_of(&vec![Frame::new(160, 90, vec![0.0; 160 * 90]); 8]), Crop::NONE);
        // A black sky above a lit street.
        let mut sky = picture(160, 90, 1);
        fill_rows(&mut sky, 0..20, 0.0);
        assert_eq!(bars_of(&vec![sky; 8]), Crop::NONE);
        // Dark lines whose brightness changes between frames are scene, not a matte.
        let mut changing: Vec<Frame> = (0..8).map(|i| picture(160, 90, i)).collect();
        for (i, f) in changing.iter_mut().enumerate() {
            fill_rows(f, 0..10, 0.08 * (i % 2) as f32);
            fill_rows(f, 80..90, 0.0);
        }
        assert_eq!(bars_of(&changing), Crop::NONE);
        // Frames of different sizes are left whole.
        let mut a = picture(160, 90, 1);
        fill_rows(&mut a, 0..10, 0.0);
        fill_rows(&mut a, 80..90, 0.0);
        assert_eq!(bars_of(&[a.clone(), picture(160, 92, 2)]), Crop::NONE);
        assert_eq!(bars_of(&[a.clone(), a]), Crop { rows: 10, columns: 0 });
    }

    #[test]
    fn bars_leave_at_least_a_quarter_and_come_in_lines_of_two_or_more() {
        let mut thin = picture(100, 80, 1);
        fill_rows(&mut thin, 0..1, 0.0);
        fill_rows(&mut thin, 79..80, 0.0);
        assert_eq!(bars_of(&[thin]), Crop::NONE);
        // 80 rows: at most 30 from each end (4·(80 − 60) = 80).
        for (bar, expected) in [(30, 30), (31, 0)] {
            let mut f = picture(100, 80, 1);
            fill_rows(&mut f, 0..bar, 0.0);
            fill_rows(&mut f, 80 - bar..80, 0.0);
            assert_eq!(bars_of(&[f]).rows, expected, "bars of {bar}");
        }
    }

    #[test]
    fn a_frame_without_bars_settles_the_question_at_once() {
        let mut bars = Bars::new();
        assert!(bars.possible());
        bars.observe(&picture(160, 90, 1));
        assert!(!bars.possible());
        let mut boxed = picture(160, 90, 1);
        fill_rows(&mut boxed, 0..10, 0.0);
        fill_rows(&mut boxed, 80..90, 0.0);
        let mut bars = Bars::new();
        bars.observe(&boxed);
        assert!(bars.possible());
    }

    #[test]
    fn resizing_within_a_crop_is_resizing_the_cropped_frame() {
        let frame = picture(200, 120, 3);
        let crop = Crop { rows: 7, columns: 13 };
        let (w, h) = (200 - 26, 120 - 14);
        let inner: Vec<f32> =
            (7..7 + h).flat_map(|y| frame.luma[y * 200 + 13..y * 200 + 13 + w].iter().copied()).collect();
        assert_eq!(resize_within(&frame, crop), resize(&Frame::new(w as u32, h as u32, inner)));
        // A crop that leaves exactly the model's size is a copy of what it leaves.
        let frame = picture(120, 116, 4);
        let kept = resize_within(&frame, Crop { rows: 2, columns: 4 });
        assert_eq!(kept[0], frame.luma[2 * 120 + 4]);
        assert_eq!(kept.len(), (SIZE * SIZE) as usize);
    }

    #[test]
    fn model_input_reports_a_missing_frame() {
        let err = model_input(&sample_indices(2), &[(0, vec![0.0; INPUT_LEN / FRAMES])]).unwrap_err();
        assert!(err.contains("frame 1"), "{err}");
    }
}
