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

import os
import time

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from clip import FRAMES, LABELS, SIZE, image_luma, model_input, y4m_frames

torch.set_num_threads(int(os.environ.get("MOTION_BASELINE_TORCH_THREADS", "1")))
torch.set_num_interop_threads(1)
MODEL = torch.jit.load(os.environ["MOTION_BASELINE_MODEL"], map_location="cpu").eval()
with torch.inference_mode():
    MODEL(torch.zeros(1, FRAMES, SIZE, SIZE))

app = FastAPI()


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
