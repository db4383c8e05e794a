"""Triton Python-backend model: the TorchScript network (models/motion-resnet18/model.pt) on
the batch Triton's dynamic batcher gathered, then softmax. MOTION_TRITON_MODEL names the file,
MOTION_TRITON_TORCH_THREADS libtorch's intra-op threads, MOTION_TRITON_PATH the directories to
import from (the backend's stub does not read PYTHONPATH)."""

import os
import sys

sys.path[:0] = [p for p in os.environ.get("MOTION_TRITON_PATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(int(os.environ.get("MOTION_TRITON_TORCH_THREADS", "1")))
        torch.set_num_interop_threads(1)
        self.model = torch.jit.load(os.environ["MOTION_TRITON_MODEL"], map_location="cpu").eval()
        with torch.inference_mode():
            self.model(torch.zeros(1, 8, 112, 112))

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.concatenate(inputs)))
            scores = torch.softmax(logits, dim=1).numpy()
        responses, row = [], 0
        for rows in inputs:
            out = pb_utils.Tensor("scores", scores[row:row + len(rows)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            row += len(rows)
        return responses
