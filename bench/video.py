"""H.264 in the guest, measured. Started by bench/video, which builds what it needs.

Makes two clips with ffmpeg (libx264's defaults: High profile, B-frames, a keyframe every 250
frames) of a camera panning across ffmpeg's test pattern at 640x360 and 25 frames a second:
10 s and 60 s. Then prints and writes (bench/results/video.json):

- decoding per frame, native against wasm: the default guest's MP4 path built natively
  (target/release/mp4time) against the same code in the server's guest, each decoding every
  frame of the 10 s clip and resizing it to the model's planes (in the server: a timeline in
  5-frame windows, whose sampling takes every frame; its preprocess stage, before the first
  model call, is that work);
- the 60 s clip classified as a timeline of 2 s windows: the client's wall time (median of the
  runs) and the server's stage timings.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from attack import halt, launch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = str(ROOT / "target/release/motion-host")
MP4TIME = str(ROOT / "target/release/mp4time")


def log(message):
    print(f"[video] {message}", file=sys.stderr, flush=True)


def make_clip(path, seconds):
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25",
         "-vf", f"crop=640:360:x='t*1200/{seconds}':y='t*600/{seconds}'", "-t", str(seconds),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True)


def post(port, query, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify?{query}", data=body,
                                     headers={"Content-Type": "video/mp4"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    return answer, (time.perf_counter() - started) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed requests of each kind")
    parser.add_argument("--out", default=str(ROOT / "bench/results/video.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        short, long = tmp / "pan-10s.mp4", tmp / "pan-60s.mp4"
        log("making the clips with ffmpeg")
        make_clip(short, 10)
        make_clip(long, 60)
        log("decoding natively")
        native = json.loads(subprocess.run([MP4TIME, str(short), "--iterations", str(args.runs)],
                                           check=True, capture_output=True, text=True).stdout)
        proc, server_log, port = launch(BINARY, str(tmp), [
            f"--guest=motion={ROOT}/target/wasm32-wasip2/release/motion_guest.wasm", f"--tls-dir={tmp}/none"])
        try:
            for _ in range(60):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5):
                        break
                except OSError:
                    time.sleep(1)
            log("decoding in the guest")
            body = short.read_bytes()
            post(port, "segment_frames=5", body)
            wasm = []
            for _ in range(args.runs):
                answer, _ = post(port, "segment_frames=5", body)
                wasm.append(answer["timings_ms"]["preprocess"])
            frames = answer["frames_total"]
            log("classifying the 60 s clip in 2 s windows")
            body = long.read_bytes()
            post(port, "segment=2", body)
            walls, timings = [], []
            for _ in range(max(3, args.runs // 2)):
                answer, wall = post(port, "segment=2", body)
                walls.append(wall)
                timings.append(answer["timings_ms"])
            windows = len(answer["segments"])
        finally:
            halt(proc, server_log)
    wasm_ms = statistics.median(wasm)
    per_frame_native = native["planes_ms_per_frame"]
    per_frame_wasm = wasm_ms / frames
    timeline_ms = statistics.median(walls)
    stage = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
    results = {
        "clip": "640x360, 25 frames a second, libx264 defaults (High, B-frames, keyframe every 250)",
        "decode": {
            "frames": frames,
            "native_decode_ms_per_frame": native["decode_ms_per_frame"],
            "native_ms_per_frame": per_frame_native,
            "wasm_ms_per_frame": per_frame_wasm,
            "wasm_over_native": per_frame_wasm / per_frame_native,
        },
        "timeline_60s_2s_windows": {
            "frames": answer["frames_total"],
            "windows": windows,
            "wall_ms_p50": timeline_ms,
            "runs_ms": walls,
            "server_timings_ms_p50": stage,
        },
    }
    print()
    print("| H.264 640x360, per frame | native | wasm (guest) | wasm / native |")
    print("|---|---|---|---|")
    print(f"| decode + resize to the model's planes | {per_frame_native:.2f} ms | {per_frame_wasm:.2f} ms | "
          f"{per_frame_wasm / per_frame_native:.2f}x |")
    print(f"| decode alone | {native['decode_ms_per_frame']:.2f} ms | | |")
    print()
    print(f"60 s clip ({answer['frames_total']} frames) as {windows} windows of 2 s: "
          f"{timeline_ms / 1000:.2f} s p50 wall (preprocess {stage['preprocess'] / 1000:.2f} s, "
          f"inference {stage['inference']:.0f} ms)")
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
