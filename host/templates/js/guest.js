// {{name}}: a motion-host guest in JavaScript.
//
// It chooses the frames, names the labels and answers. The toolkit component (composed in by
// build.sh) decodes and preprocesses at Rust speed; wasi:nn runs the model in the host.

import { Clip, accepts, sampleIndices, softmax, topK } from 'motion:toolkit/preprocess@0.1.0';
import { loadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
import { Tensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';

const MODEL = 'motion-resnet18';
// The model's outputs, by index: this guest's names for them.
const LABELS = [
  'static', 'pan_left', 'pan_right', 'tilt_up', 'tilt_down', 'zoom_in', 'zoom_out',
  'roll_clockwise', 'roll_counterclockwise', 'truck_left', 'truck_right', 'pedestal_up',
  'pedestal_down', 'dolly_in', 'dolly_out', 'shake',
];

// An import's error arrives as a thrown value whose `payload` is the error; anything else thrown
// is this guest's own bug, and is thrown on (the request fails as a guest fault). Throwing a
// plain { tag, val } object from classify returns that error; throwing an Error traps instead.
const payload = (e) => {
  if (!e || e.payload === undefined) throw e;
  return e.payload;
};

export const classifier = {
  info() {
    return {
      name: '{{name}}', version: '0.1.0', model: MODEL,
      inputShape: new BigInt64Array([-1n, 8n, 112n, 112n]), labels: LABELS,
      // Every type the toolkit decodes (PNG and JPEG frames, alone or as the parts of
      // multipart/form-data; GIF; Y4M): list fewer to accept fewer. Validation sends a sample
      // of each.
      accepts: accepts(),
    };
  },

  classify(req) {
    let clip, frames, planes;
    try {
      clip = Clip.open(req.media);
      // The model contract's choice: 8 frames, evenly spaced, first and last included.
      frames = sampleIndices(clip.frameCount());
      planes = clip.planes(frames); // FP32 bytes, [8, 112, 112]
    } catch (e) {
      throw payload(e); // { tag: 'bad-input' | 'unsupported-media', val }: the client's fault
    }
    let outputs;
    try {
      const context = loadByName(MODEL).initExecutionContext();
      outputs = context.compute([['input', new Tensor(new Uint32Array([1, 8, 112, 112]), 'FP32', planes)]]);
    } catch (e) {
      const error = payload(e); // a wasi:nn error
      throw { tag: 'inference', val: `${error.code()}: ${error.data()}` };
    }
    const logits = outputs.find(([name]) => name === 'logits');
    if (!logits) throw { tag: 'inference', val: "the model returned no 'logits' tensor" };
    const raw = logits[1].data();
    if (raw.byteLength % 4) throw { tag: 'inference', val: `'logits' has ${raw.byteLength} bytes, not whole FP32 values` };
    let scores;
    try {
      scores = softmax(new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)));
    } catch (e) {
      throw { tag: 'inference', val: payload(e) };
    }
    const best = Array.from(topK(scores, req.topK), (i) => ({ label: LABELS[i], score: scores[i] }));
    return {
      label: best[0].label, score: best[0].score, topK: best,
      framesTotal: clip.frameCount(), framesUsed: new Set(frames).size,
    };
  },
};
