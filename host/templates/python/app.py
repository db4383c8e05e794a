"""{{name}}: a motion-host guest in Python.

It names the labels, chooses the frames and ranks the model's answer. The toolkit component
(composed around it by build.sh) receives the upload, decodes and preprocesses at Rust speed and
runs the model through wasi:nn; this code never sees the media.
"""

import math

from wit_world import exports
from wit_world.exports.policy import About, LabelScore

MODEL = "motion-resnet18"
# The model's outputs, by index: this guest's names for them.
LABELS = [
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
    "roll_clockwise", "roll_counterclockwise", "truck_left", "truck_right", "pedestal_up",
    "pedestal_down", "dolly_in", "dolly_out", "shake",
]
# Every type the toolkit decodes (PNG and JPEG frames, alone or as the parts of
# multipart/form-data; GIF; Y4M; H.264 MP4): list fewer to accept fewer. Validation sends a
# sample of each.
ACCEPTS = ["image/png", "image/jpeg", "image/gif", "video/x-yuv4mpeg", "video/mp4",
           "multipart/form-data"]


class Policy(exports.Policy):
    def describe(self) -> About:
        return About(name="{{name}}", version="0.1.0", model=MODEL, labels=LABELS, accepts=ACCEPTS)

    def frames(self, frame_count: int) -> list[int]:
        # The model contract's choice: 8 frames, evenly spaced, first and last included (for the
        # whole clip, and for each window of a timeline if the request asks for one).
        return [round(i * (frame_count - 1) / 7) for i in range(8)]

    def rank(self, logits: list[list[float]], k: int) -> list[list[LabelScore]]:
        # Each row's k best labels, best first, with their softmax probabilities. A raised
        # Err(message) goes back to the client as an inference error.
        return [[LabelScore(LABELS[i], scores[i]) for i in best(scores, k)]
                for scores in map(softmax, logits)]


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def best(scores: list[float], k: int) -> list[int]:
    """The indices of the k highest scores, best first; ties keep the lower index first."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
