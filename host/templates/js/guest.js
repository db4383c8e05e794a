// {{name}}: a motion-host guest in JavaScript.
//
// It names the labels, chooses the frames and ranks the model's answer. The toolkit component
// (composed around it by build.sh) receives the upload, decodes and preprocesses at Rust speed
// and runs the model through wasi:nn; this code never sees the media.

const MODEL = 'motion-resnet18';
// The model's outputs, by index: this guest's names for them.
const LABELS = [
  'static', 'pan_left', 'pan_right', 'tilt_up', 'tilt_down', 'zoom_in', 'zoom_out',
  'roll_clockwise', 'roll_counterclockwise', 'truck_left', 'truck_right', 'pedestal_up',
  'pedestal_down', 'dolly_in', 'dolly_out', 'shake',
];
// Every type the toolkit decodes (PNG and JPEG frames, alone or as the parts of
// multipart/form-data; GIF; Y4M; H.264 MP4): list fewer to accept fewer. Validation sends a
// sample of each.
const ACCEPTS = [
  'image/png', 'image/jpeg', 'image/gif', 'video/x-yuv4mpeg', 'video/mp4', 'multipart/form-data',
];

export const policy = {
  describe() {
    return { name: '{{name}}', version: '0.1.0', model: MODEL, labels: LABELS, accepts: ACCEPTS };
  },

  // The model contract's choice: 8 frames, evenly spaced, first and last included (for the whole
  // clip, and for each window of a timeline if the request asks for one).
  frames(frameCount) {
    return Uint32Array.from({ length: 8 }, (_, i) => Math.round((i * (frameCount - 1)) / 7));
  },

  // Each row's k best labels, best first, with their softmax probabilities. Throwing a string
  // returns it to the client as an inference error; throwing an Error traps instead.
  rank(logits, k) {
    return logits.map((row) => {
      const scores = softmax(row);
      return best(scores, k).map((i) => ({ label: LABELS[i], score: scores[i] }));
    });
  },
};

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = Array.from(logits, (x) => Math.exp(x - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

// The indices of the k highest scores, best first; ties keep the lower index first.
function best(scores, k) {
  const order = scores.map((_, i) => i);
  order.sort((a, b) => scores[b] - scores[a] || a - b);
  return order.slice(0, k);
}
