"""Triton Python-backend model: one clip's bytes to the model input [8, 112, 112], with the
Python service's decoding and preprocessing (bench/baseline/clip.py), unchanged.

The backend's stub does not read PYTHONPATH, so the benchmark passes the directories to import
from (its virtual environment, bench/baseline) as MOTION_TRITON_PATH."""

import os
import sys

sys.path[:0] = [p for p in os.environ.get("MOTION_TRITON_PATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from clip import image_luma, model_input, y4m_frames  # noqa: E402


def frames_of(elements: list) -> list:
    """A Y4M stream (one element) or one encoded image per element, as loaders of luma."""
    if len(elements) == 1 and elements[0].startswith(b"YUV4MPEG2"):
        return [lambda p=p: p.astype(np.float32) / 255.0 for p in y4m_frames(elements[0])]
    return [lambda p=p: image_luma(p) for p in elements]


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(1)

    def execute(self, requests):
        responses = []
        for request in requests:
            media = pb_utils.get_input_tensor_by_name(request, "media").as_numpy()
            try:
                rows = [model_input(frames_of([bytes(e) for e in row]))[0] for row in media]
                batch = torch.cat(rows).numpy()
                out = pb_utils.Tensor("input", batch.astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except (ValueError, OSError, KeyError) as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"cannot read the clip: {e}")))
        return responses
