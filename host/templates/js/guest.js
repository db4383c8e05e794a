// {{name}}: a motion-host guest in JavaScript.
//
// It chooses the frames, names the labels and answers. The toolkit component (composed in by
// build.sh) decodes and preprocesses at Rust speed; wasi:nn runs the model in the host.

import { Clip, accepts, sampleIndices, softmax, topK } from 'motion:toolkit/preprocess@0.2.0';
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
      // multipart/form-data; GIF; Y4M; H.264 MP4): list fewer to accept fewer. Validation
      // sends a sample of each.
      accepts: accepts(),
    };
  },

  classify(req) {
    let clip, frames, windows, planes;
    try {
      clip = Clip.open(req.media);
      // The model contract's choice: 8 frames, evenly spaced, first and last included, for the
      // whole clip and within each window of a timeline, if the request asks for one.
      frames = sampleIndices(clip.frameCount());
      windows = req.segments === undefined ? [] : clip.windows(req.segments, req.maxSegments);
      planes = clip.planes(Uint32Array.from([...frames, ...windows.flatMap((w) => [...w.sample])]));
    } catch (e) {
      // { tag: 'bad-input' | 'unsupported-media' | 'bad-request', val }: the client's fault
      throw payload(e);
    }
    const rowsLogits = runModel(planes, 1 + windows.length);
    const [best, ...rows] = rowsLogits.map((logits) => ranked(logits, req.topK));
    return {
      label: best[0].label, score: best[0].score, topK: best,
      framesTotal: clip.frameCount(), framesUsed: new Set(frames).size,
      segments: windows.map((w, i) => ({
        startFrame: w.startFrame, endFrame: w.endFrame, startS: w.startS, endS: w.endS,
        label: rows[i][0].label, score: rows[i][0].score, topK: rows[i],
      })),
    };
  },
};

const ROW_BYTES = 8 * 112 * 112 * 4;
// Rows in one wasi:nn call: 12.8 MB, within the host's default 32 MiB a call.
const ROWS_PER_CALL = 32;

// Each row's logits, the rows sent ROWS_PER_CALL at a time (one forward pass each).
function runModel(planes, rows) {
  const logits = [];
  for (let start = 0; start < rows; start += ROWS_PER_CALL) {
    const n = Math.min(ROWS_PER_CALL, rows - start);
    let outputs;
    try {
      const context = loadByName(MODEL).initExecutionContext();
      const input = planes.subarray(start * ROW_BYTES, (start + n) * ROW_BYTES);
      outputs = context.compute([['input', new Tensor(new Uint32Array([n, 8, 112, 112]), 'FP32', input)]]);
    } catch (e) {
      const error = payload(e); // a wasi:nn error
      throw { tag: 'inference', val: `${error.code()}: ${error.data()}` };
    }
    const found = outputs.find(([name]) => name === 'logits');
    if (!found) throw { tag: 'inference', val: "the model returned no 'logits' tensor" };
    const raw = found[1].data();
    if (raw.byteLength !== n * LABELS.length * 4) {
      throw { tag: 'inference', val: `'logits' has ${raw.byteLength} bytes for ${n} rows` };
    }
    const end = raw.byteOffset + raw.byteLength;
    const values = new Float32Array(raw.buffer.slice(raw.byteOffset, end));
    const width = LABELS.length;
    for (let i = 0; i < n; i++) logits.push(values.subarray(i * width, (i + 1) * width));
  }
  return logits;
}

// The k best labels for one row, best first, with their probabilities.
function ranked(logits, k) {
  let scores;
  try {
    scores = softmax(logits);
  } catch (e) {
    throw { tag: 'inference', val: payload(e) };
  }
  return Array.from(topK(scores, k), (i) => ({ label: LABELS[i], score: scores[i] }));
}
