"""The Python service motion-host replaces, written the way such a service is usually written
and tuned as far as its own stack allows: FastAPI under gunicorn with uvicorn workers, the
TorchScript model loaded with torch in each worker, frames decoded with Pillow and
preprocessed with numpy, the work moved off the event loop into a thread.

It follows the same model contract as motion-host's default guest: 8 frames sampled as
round(i*(n-1)/7), BT.601 luma, a 112x112 antialiased bilinear resize (Pillow's own), (x-0.5)/0.25,
softmax and top-k; and answers in the same JSON shape.

    MOTION_BASELINE_MODEL=../../models/motion-resnet18/model.pt MOTION_BASELINE_TORCH_THREADS=2 \
      gunicorn -k uvicorn.workers.UvicornWorker -w 1 -b 127.0.0.1:9443 \
      --certfile tls.crt --keyfile tls.key app:app
"""

import io
import os
import time

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

LABELS = [
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
    "roll_clockwise", "roll_counterclockwise", "truck_left", "truck_right", "pedestal_up",
    "pedestal_down", "dolly_in", "dolly_out", "shake",
]
FRAMES, SIZE = 8, 112
BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)

torch.set_num_threads(int(os.environ.get("MOTION_BASELINE_TORCH_THREADS", "1")))
torch.set_num_interop_threads(1)
MODEL = torch.jit.load(os.environ["MOTION_BASELINE_MODEL"], map_location="cpu").eval()
with torch.inference_mode():
    MODEL(torch.zeros(1, FRAMES, SIZE, SIZE))

app = FastAPI()


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


def classify_frames(frames: list, top_k: int) -> dict:
    started = time.perf_counter()
    tensor, frames_total, frames_used = model_input(frames)
    preprocessed = time.perf_counter()
    with torch.inference_mode():
        logits = MODEL(tensor)[0]
    inferred = time.perf_counter()
    probs = torch.softmax(logits, dim=0)
    scores, order = torch.topk(probs, top_k)
    top = [{"label": LABELS[i], "score": float(s)} for s, i in zip(scores.tolist(), order.tolist())]
    done = time.perf_counter()
    return {
        "label": top[0]["label"], "score": top[0]["score"], "top_k": top,
        "frames_total": frames_total, "frames_used": frames_used,
        "model": {"name": "motion-resnet18"},
        "timings_ms": {"preprocess": (preprocessed - started) * 1e3,
                       "inference": (inferred - preprocessed) * 1e3,
                       "postprocess": (done - inferred) * 1e3},
    }


@app.get("/health")
def health():
    return {"status": "healthy", "model_loaded": True}


@app.post("/v1/classify")
async def classify(request: Request, top_k: int = 3):
    received = time.perf_counter()
    if not 1 <= top_k <= len(LABELS):
        raise HTTPException(400, f"top_k must be in 1..{len(LABELS)}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            form = await request.form()
            parts = [await f.read() for _, f in form.multi_items() if hasattr(f, "read")]
            if not parts:
                raise ValueError("no frames in the form")
            frames = [lambda p=p: image_luma(p) for p in parts]
        elif content_type == "video/x-yuv4mpeg":
            body = await request.body()
            planes = y4m_frames(body)
            frames = [lambda p=p: p.astype(np.float32) / 255.0 for p in planes]
        elif content_type.startswith("image/"):
            body = await request.body()
            frames = [lambda: image_luma(body)]
        else:
            raise HTTPException(415, f"unsupported media type '{content_type}'")
        answer = await run_in_threadpool(classify_frames, frames, top_k)
    except (ValueError, OSError, KeyError) as e:
        raise HTTPException(422, f"cannot read the clip: {e}")
    answer["timings_ms"]["total"] = (time.perf_counter() - received) * 1e3
    return answer
