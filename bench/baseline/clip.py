"""How the Python service reads a clip and makes the model input: decoding (Pillow, numpy),
frame sampling, luma, resize and normalisation, as the model contract says. `app.py` serves it;
the benchmark's Triton models run the same code (bench/triton)."""

import io

import numpy as np
import torch
from PIL import Image

LABELS = [
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
    "roll_clockwise", "roll_counterclockwise", "truck_left", "truck_right", "pedestal_up",
    "pedestal_down", "dolly_in", "dolly_out", "shake",
]
FRAMES, SIZE = 8, 112
BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sample_indices(n: int) -> list[int]:
    last = n - 1
    return [(2 * i * last + 7) // 14 for i in range(FRAMES)]


def resized(luma: np.ndarray) -> np.ndarray:
    """Luma in [0,1] (float32, HxW) to 112x112 with Pillow's antialiased bilinear filter."""
    return np.asarray(Image.fromarray(luma, mode="F").resize((SIZE, SIZE), Image.BILINEAR))


def image_luma(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    if img.mode in ("L", "I;16"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb @ BT601


def y4m_frames(data: bytes) -> list[np.ndarray]:
    """Every frame's Y plane from a Y4M stream, in [0,1]."""
    header, _, rest = data.partition(b"\n")
    fields = header.split()
    if not fields or fields[0] != b"YUV4MPEG2":
        raise ValueError("not a YUV4MPEG2 stream")
    tags = {f[:1]: f[1:] for f in fields[1:]}
    w, h = int(tags[b"W"]), int(tags[b"H"])
    chroma = tags.get(b"C", b"420").decode()
    cw, ch = {"444": (w, h), "422": ((w + 1) // 2, h), "mono": (0, 0)}.get(
        chroma[:4] if chroma.startswith("mono") else chroma[:3], ((w + 1) // 2, (h + 1) // 2))
    size = w * h + 2 * cw * ch
    frames, pos = [], 0
    while pos < len(rest):
        end = rest.index(b"\n", pos)
        pos = end + 1
        plane = np.frombuffer(rest, dtype=np.uint8, count=w * h, offset=pos).reshape(h, w)
        frames.append(plane)
        pos += size
    return frames


def model_input(frames: list) -> tuple[torch.Tensor, int, int]:
    """frames: a list of callables, each returning one frame's luma in [0,1]."""
    indices = sample_indices(len(frames))
    planes = {}
    for i in sorted(set(indices)):
        planes[i] = resized(frames[i]())
    stacked = np.stack([planes[i] for i in indices])
    return torch.from_numpy((stacked - 0.5) / 0.25).unsqueeze(0), len(frames), len(planes)
