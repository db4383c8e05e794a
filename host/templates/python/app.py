"""{{name}}: a motion-host guest in Python.

It chooses the frames, names the labels and answers. The toolkit component (composed in by
build.sh) decodes and preprocesses at Rust speed; wasi:nn runs the model in the host.
"""

import struct

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import graph, preprocess, tensor, types

MODEL = "motion-resnet18"
# The model's outputs, by index: this guest's names for them.
LABELS = [
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
    "roll_clockwise", "roll_counterclockwise", "truck_left", "truck_right", "pedestal_up",
    "pedestal_down", "dolly_in", "dolly_out", "shake",
]


class Classifier(exports.Classifier):
    def info(self) -> types.GuestInfo:
        # Every type the toolkit decodes (PNG and JPEG frames, alone or as the parts of
        # multipart/form-data; GIF; Y4M; H.264 MP4): list fewer to accept fewer. Validation
        # sends a sample of each.
        return types.GuestInfo(name="{{name}}", version="0.1.0", model=MODEL,
                               input_shape=[-1, 8, 112, 112], labels=LABELS, accepts=preprocess.accepts())

    def classify(self, req: types.Request) -> types.Classification:
        try:
            clip = preprocess.Clip.open([preprocess.Media(m.content_type, m.data) for m in req.media])
            # The model contract's choice: 8 frames, evenly spaced, first and last included, for
            # the whole clip and within each window of a timeline, if the request asks for one.
            frames = preprocess.sample_indices(clip.frame_count())
            windows = []
            if req.segments is not None:
                windows = clip.windows(segmentation(req.segments), req.max_segments)
            # FP32 bytes, one row of [8, 112, 112] each
            planes = clip.planes(frames + [i for w in windows for i in w.sample])
        except Err as e:  # the toolkit's error: bad-input, unsupported-media or bad-request
            raise Err(guest_error(e.value))
        best, *rows = [ranked(logits, req.top_k) for logits in run_model(planes, 1 + len(windows))]
        segments = [types.Segment(w.start_frame, w.end_frame, w.start_s, w.end_s,
                                  r[0].label, r[0].score, r) for w, r in zip(windows, rows)]
        return types.Classification(label=best[0].label, score=best[0].score, top_k=best,
                                    frames_total=clip.frame_count(), frames_used=len(set(frames)),
                                    segments=segments)


ROW_BYTES = 8 * 112 * 112 * 4
# Rows in one wasi:nn call: 12.8 MB, within the host's default 32 MiB a call.
ROWS_PER_CALL = 32


def run_model(planes: bytes, rows: int) -> list[list[float]]:
    """Each row's logits, the rows sent ROWS_PER_CALL at a time (one forward pass each)."""
    logits = []
    for start in range(0, rows, ROWS_PER_CALL):
        n = min(ROWS_PER_CALL, rows - start)
        try:
            context = graph.load_by_name(MODEL).init_execution_context()
            model_input = tensor.Tensor([n, 8, 112, 112], tensor.TensorType.FP32,
                                        planes[start * ROW_BYTES:(start + n) * ROW_BYTES])
            outputs = dict(context.compute([("input", model_input)]))
        except Err as e:  # a wasi:nn error
            raise Err(types.Error_Inference(f"{e.value.code().name}: {e.value.data()}"))
        if "logits" not in outputs:
            raise Err(types.Error_Inference("the model returned no 'logits' tensor"))
        raw = outputs["logits"].data()
        if len(raw) != n * len(LABELS) * 4:
            raise Err(types.Error_Inference(f"'logits' has {len(raw)} bytes for {n} rows"))
        values = struct.unpack(f"<{len(raw) // 4}f", raw)
        logits += [list(values[i:i + len(LABELS)]) for i in range(0, len(values), len(LABELS))]
    return logits


def ranked(logits: list[float], k: int) -> list[types.LabelScore]:
    """The k best labels for one row, best first, with their probabilities."""
    try:
        scores = preprocess.softmax(logits)
    except Err as e:
        raise Err(types.Error_Inference(e.value))
    return [types.LabelScore(LABELS[i], scores[i]) for i in preprocess.top_k(scores, k)]


def segmentation(how: types.Segmentation) -> preprocess.Segmentation:
    if isinstance(how, types.Segmentation_Seconds):
        return preprocess.Segmentation_Seconds(how.value)
    return preprocess.Segmentation_Frames(how.value)


def guest_error(e: preprocess.Error) -> types.Error:
    if isinstance(e, preprocess.Error_UnsupportedMedia):
        return types.Error_UnsupportedMedia(e.value)
    if isinstance(e, preprocess.Error_BadRequest):
        return types.Error_BadRequest(e.value)
    return types.Error_BadInput(e.value)
