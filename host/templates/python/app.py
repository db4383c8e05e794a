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
        # multipart/form-data; GIF; Y4M): list fewer to accept fewer. Validation sends a sample
        # of each.
        return types.GuestInfo(name="{{name}}", version="0.1.0", model=MODEL,
                               input_shape=[-1, 8, 112, 112], labels=LABELS, accepts=preprocess.accepts())

    def classify(self, req: types.Request) -> types.Classification:
        try:
            clip = preprocess.Clip.open([preprocess.Media(m.content_type, m.data) for m in req.media])
            # The model contract's choice: 8 frames, evenly spaced, first and last included.
            frames = preprocess.sample_indices(clip.frame_count())
            planes = clip.planes(frames)  # FP32 bytes, [8, 112, 112]
        except Err as e:  # the toolkit's error: bad-input or unsupported-media
            raise Err(types.Error_UnsupportedMedia(e.value.value)
                      if isinstance(e.value, preprocess.Error_UnsupportedMedia)
                      else types.Error_BadInput(e.value.value))
        try:
            context = graph.load_by_name(MODEL).init_execution_context()
            model_input = tensor.Tensor([1, 8, 112, 112], tensor.TensorType.FP32, planes)
            outputs = dict(context.compute([("input", model_input)]))
        except Err as e:  # a wasi:nn error
            raise Err(types.Error_Inference(f"{e.value.code().name}: {e.value.data()}"))
        if "logits" not in outputs:
            raise Err(types.Error_Inference("the model returned no 'logits' tensor"))
        raw = outputs["logits"].data()
        if len(raw) % 4:
            raise Err(types.Error_Inference(f"'logits' has {len(raw)} bytes, not whole FP32 values"))
        try:
            scores = preprocess.softmax(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
        except Err as e:
            raise Err(types.Error_Inference(e.value))
        best = [types.LabelScore(LABELS[i], scores[i]) for i in preprocess.top_k(scores, req.top_k)]
        return types.Classification(label=best[0].label, score=best[0].score, top_k=best,
                                    frames_total=clip.frame_count(), frames_used=len(set(frames)))
