"""The model contract's preprocessing, in numpy: what the default guest does to a clip.

Training feeds the network exactly what the guest will feed it in service, so the numbers live
here once and the guest (`guest/src/preprocess.rs`) is checked against them by the test suite
(`tests/training.rs` runs this file's command line on the same clips the guest reads):

- 8 frames sampled uniformly, first and last included: frame i of n is round(i*(n-1)/7);
- each frame's BT.601 luma on full-range values in [0, 1] (a grey image is used as is, a Y4M's
  Y plane as is);
- letterbox and pillarbox bars cropped away (contract 1.1): the same crop for the 8 frames,
  found from them by `bars` below;
- resized to 112x112 over what is left with a triangle filter whose support widens with the
  shrink factor (Pillow's BILINEAR, the image crate's Triangle), as two small matrices;
- normalised by (x - 0.5) / 0.25; channel i is frame i in time order.

    python preprocess.py OUT.f32 FILE...   # FILE: PNG/JPEG stills in order, one GIF or one Y4M

writes the [8, 112, 112] model input as little-endian float32.
"""

from __future__ import annotations

import functools
import pathlib
import sys

import numpy as np

FRAMES = 8
SIZE = 112
# A row (or column) is a bar when, in every sampled frame, its mean luma is at most BAR_MEAN and
# its pixels stray from that mean by at most BAR_SPREAD on average, and its mean moves by at most
# BAR_DRIFT across the frames: flat, dark and still, as a matte is and as scene content, even a
# dark one, rarely is over a whole line.
BAR_MEAN = 0.1
BAR_SPREAD = 0.02
BAR_DRIFT = 0.02
MEAN = 0.5
STD = 0.25
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sample_indices(n: int) -> list[int]:
    """Which of a clip's n frames feed the model: frame i is round(i*(n-1)/7)."""
    last = max(n - 1, 0)
    steps = FRAMES - 1
    return [(2 * i * last + steps) // (2 * steps) for i in range(FRAMES)]


@functools.lru_cache(maxsize=256)
def triangle_matrix(source: int, target: int = SIZE) -> np.ndarray:
    """The [target, source] matrix that resizes one axis: row i holds the triangle filter's
    weights around source position (i + 0.5) * source / target, widened by the shrink factor and
    normalised to sum to 1 (as the guest's `triangle_taps`)."""
    ratio = source / target
    scale = max(ratio, 1.0)
    matrix = np.zeros((target, source), dtype=np.float32)
    for i in range(target):
        centre = (i + 0.5) * ratio
        first = min(max(int(np.floor(centre - scale)), 0), source - 1)
        end = min(max(int(np.ceil(centre + scale)), first + 1), source)
        taps = np.arange(first, end, dtype=np.float32)
        weights = np.maximum(1.0 - np.abs((taps + 0.5 - centre) / scale), 0.0)
        matrix[i, first:end] = weights / weights.sum()
    matrix.setflags(write=False)
    return matrix


def resize(luma: np.ndarray) -> np.ndarray:
    """One [H, W] luma frame (or a stack [..., H, W]) resized to 112x112."""
    height, width = luma.shape[-2:]
    if (height, width) == (SIZE, SIZE):
        return luma.astype(np.float32, copy=True)
    return triangle_matrix(height) @ luma.astype(np.float32) @ triangle_matrix(width).T


def _bar_lines(frames: np.ndarray) -> np.ndarray:
    """Which lines (the last axis's rows of each [T, lines, length] stack) are bars."""
    means = frames.mean(axis=2)
    spread = np.abs(frames - means[..., None]).mean(axis=2)
    flat = ((means <= BAR_MEAN) & (spread <= BAR_SPREAD)).all(axis=0)
    return flat & (means.max(axis=0) - means.min(axis=0) <= BAR_DRIFT)


def _run(bars: np.ndarray) -> int:
    """How many bars come first in `bars`."""
    return len(bars) if bars.all() else int(np.argmin(bars))


def _symmetric(bars: np.ndarray) -> int:
    """The lines to crop from each end: as many as both ends have bars, if at least 2 and if at
    least a quarter of the lines stays."""
    n = len(bars)
    crop = min(_run(bars), _run(bars[::-1]))
    return crop if crop >= 2 and 4 * (n - 2 * crop) >= n else 0


def bars(frames: list[np.ndarray]) -> tuple[int, int]:
    """(rows, columns): how many rows to crop from the top and from the bottom, and columns from
    the left and from the right, of frames of one size ([H, W] luma in [0, 1]) to take away their
    letterbox and pillarbox bars. Frames of different sizes are not cropped."""
    if len({f.shape for f in frames}) != 1:
        return 0, 0
    stack = np.stack(frames).astype(np.float32)
    return _symmetric(_bar_lines(stack)), _symmetric(_bar_lines(stack.transpose(0, 2, 1)))


def crop(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The frames without their bars (the same crop for all)."""
    rows, columns = bars(frames)
    if rows == columns == 0:
        return frames
    return [f[rows : f.shape[0] - rows, columns : f.shape[1] - columns] for f in frames]


def normalise(x: np.ndarray) -> np.ndarray:
    return (x - MEAN) / STD


def to_luma(pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels [H, W] (grey) or [H, W, 3|4] (RGB, alpha ignored) to luma in [0, 1]."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32) / 255.0
    return (pixels[..., :3].astype(np.float32) @ LUMA) / 255.0


def model_input(frames: list[np.ndarray]) -> np.ndarray:
    """A clip's luma frames (each [H, W] in [0, 1]) to the model input [8, 112, 112]."""
    indices = sample_indices(len(frames))
    distinct = sorted(set(indices))
    cropped = dict(zip(distinct, crop([frames[i] for i in distinct])))
    return np.stack([normalise(resize(cropped[i])) for i in indices]).astype(np.float32)


def read_y4m(data: bytes) -> list[np.ndarray]:
    """The Y planes of a Y4M stream (4:2:0, 4:2:2, 4:4:4 or mono), as luma in [0, 1]."""
    header, _, body = data.partition(b"\n")
    if not header.startswith(b"YUV4MPEG2"):
        raise ValueError("not a Y4M stream")
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    colour = fields.get(b"C", b"420").decode()
    chroma = {"mono": 0, "444": 2 * width * height, "422": 2 * ((width + 1) // 2) * height}.get(
        colour[:4] if colour.startswith("mono") else colour[:3],
        2 * ((width + 1) // 2) * ((height + 1) // 2),
    )
    frames = []
    while body:
        frame_header, _, body = body.partition(b"\n")
        if not frame_header.startswith(b"FRAME"):
            raise ValueError("Y4M frame header expected")
        plane = np.frombuffer(body[: width * height], dtype=np.uint8).reshape(height, width)
        frames.append(plane.astype(np.float32) / 255.0)
        body = body[width * height + chroma :]
    return frames


def read_clip(paths: list[pathlib.Path]) -> list[np.ndarray]:
    """Luma frames of one clip: one GIF, one Y4M, or stills in time order."""
    from PIL import Image, ImageSequence

    if len(paths) == 1 and paths[0].suffix.lower() == ".y4m":
        return read_y4m(paths[0].read_bytes())
    if len(paths) == 1 and paths[0].suffix.lower() == ".gif":
        with Image.open(paths[0]) as gif:
            return [to_luma(np.asarray(f.convert("RGB"))) for f in ImageSequence.Iterator(gif)]
    frames = []
    for path in paths:
        with Image.open(path) as image:
            grey = image.mode in ("L", "LA", "I;16", "I")
            frames.append(to_luma(np.asarray(image.convert("L" if grey else "RGB"))))
    return frames


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        print("usage: python preprocess.py OUT.f32 FILE...", file=sys.stderr)
        return 2
    tensor = model_input(read_clip([pathlib.Path(p) for p in argv[2:]]))
    pathlib.Path(argv[1]).write_bytes(tensor.astype("<f4").tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
