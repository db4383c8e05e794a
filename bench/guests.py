"""The guest kit, measured: a guest in each language from `motion-host guest new`, built with its
template's toolchain, checked, installed beside the default guest, and timed on the benchmark
clip. Started by bench/guests, which builds and installs what it needs.

For each guest it prints and writes (bench/results/guests.json) the build time of a new project
(its toolchain installed, its own build from scratch), the component's size, the time of
`motion-host guest check`, the server's validation time, and, over sequential requests for the
benchmark clip as Y4M and as PNG frames (and a 16-frame 1280×720 Y4M, where the costs that do
not grow with the clip weigh less), the guests taking turns, the median instantiation, the
median preprocessing less instantiation (the guest's own work before its first wasi:nn call, as
the race's table reports it) against the default Rust guest's, and the end-to-end p50 seen by
the client.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from attack import halt, launch  # noqa: E402
from run import make_clip  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = str(ROOT / "target/release/motion-host")
TOOLS = pathlib.Path(os.environ.get("MOTION_HOST_GUEST_TOOLS", ""))
TOKEN = "bench-guests-admin-token"
# The target: a Python guest on the toolkit within this factor of the Rust guest's preprocessing.
PYTHON_TARGET = 1.5


def log(message):
    print(f"[guests] {message}", file=sys.stderr, flush=True)


def build(lang, work):
    """Writes and builds guest `kit-LANG`; returns its bytes and the build's wall time."""
    name = f"kit-{lang}"
    project = work / name
    subprocess.run([BINARY, "guest", "new", name, "--lang", lang, "--dir", str(project)],
                   cwd=ROOT, check=True, capture_output=True)
    env = dict(os.environ, PATH=f"{TOOLS / 'venv/bin'}:{os.environ['PATH']}")
    if lang == "js":
        (project / "node_modules").symlink_to(TOOLS / "node/node_modules")
    if lang == "rust":
        # A new project's first build: its own target directory, from the fetched crates.
        env.update(CARGO_TARGET_DIR=str(work / "rust-target"), CARGO_NET_OFFLINE="true")
    started = time.perf_counter()
    subprocess.run([str(project / "build.sh")], cwd=project, env=env, check=True, capture_output=True)
    took = time.perf_counter() - started
    return name, (project / f"{name}.wasm").read_bytes(), took


def check_time(path):
    started = time.perf_counter()
    out = subprocess.run([BINARY, "guest", "check", str(path)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"guest check refused {path}:\n{out.stdout}{out.stderr}")
    return time.perf_counter() - started


def request(port, path, body, content_type, token=None, method="POST"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def hd_clip(work):
    """16 frames of 1280×720 as Y4M (22 MB): a horizontal pan over a fixed, seeded texture, so
    the per-request costs that do not grow with the clip weigh less than on the benchmark's."""
    import numpy as np
    rng = np.random.default_rng(20261205)
    width, height, frames = 1280, 720, 16
    scene = rng.integers(0, 256, (height, width + 8 * frames), dtype=np.uint8)
    path = work / "clip-hd.y4m"
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode())
        for t in range(frames):
            out.write(b"FRAME\n" + scene[:, 8 * t:8 * t + width].tobytes() + bytes([128]) * (width * height // 2))
    return path


# Requests a guest gets in a row, after WARM_IN_A_ROW untimed ones: each guest in turn, round
# after round, so a drift of the machine's speed weighs on every guest alike, while each is timed
# as it runs when it gets the traffic (its pool slot and caches its own, not another guest's).
IN_A_ROW = 10
WARM_IN_A_ROW = 2


def measure(port, guests, clip, requests):
    """Sequential requests for the clip in each form, the guests taking turns IN_A_ROW requests
    at a time; medians of each guest's stages over `requests` timed requests."""
    out = {guest: {} for guest in guests}
    for form, (path, content_type) in clip["forms"].items():
        body = path.read_bytes()
        routes = {guest: "/v1/classify" if guest == "motion" else f"/v1/guests/{guest}/classify" for guest in guests}
        times = {guest: ([], [], []) for guest in guests}
        answers = {}
        for _ in range(-(-requests // IN_A_ROW)):
            for guest, route in routes.items():
                instantiate, preprocess, total = times[guest]
                for i in range(WARM_IN_A_ROW + IN_A_ROW):
                    started = time.perf_counter()
                    answers[guest] = request(port, route, body, content_type)
                    took = (time.perf_counter() - started) * 1e3
                    if i >= WARM_IN_A_ROW:
                        t = answers[guest]["timings_ms"]
                        total.append(took)
                        instantiate.append(t["instantiate"])
                        preprocess.append(t["preprocess"] - t["instantiate"])
        for guest, (instantiate, preprocess, total) in times.items():
            out[guest][form] = {
                "instantiate_ms": statistics.median(instantiate),
                "preprocess_ms": statistics.median(preprocess),
                "p50_ms": statistics.median(total),
                "label": answers[guest]["label"],
            }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="timed requests per guest and form")
    args = parser.parse_args()
    if not (TOOLS / "venv/bin/componentize-py").exists():
        sys.exit("MOTION_HOST_GUEST_TOOLS names no guest toolchains: run bench/guests")

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        clip = make_clip(work)
        clip["forms"]["y4m-hd"] = (hd_clip(work), "video/x-yuv4mpeg")
        rows = {"motion": {"lang": "rust (default guest)", "bytes": (ROOT / "target/wasm32-wasip2/release/motion_guest.wasm").stat().st_size}}
        built = {}
        for lang in ["rust", "python", "js"]:
            log(f"building the {lang} template")
            name, wasm, took = build(lang, work)
            path = work / f"{name}.wasm"
            path.write_bytes(wasm)
            built[name] = wasm
            rows[name] = {"lang": lang, "bytes": len(wasm), "build_s": took, "check_s": check_time(path)}
        (work / "token").write_text(TOKEN)
        proc, server_log, port = launch(BINARY, tmp, [
            f"--guest=motion={ROOT}/target/wasm32-wasip2/release/motion_guest.wasm",
            f"--admin-token-file={work / 'token'}"])
        try:
            while True:
                try:
                    if request(port, "/health", None, None, method="GET")["status"] == "healthy":
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            for name, wasm in built.items():
                entry = request(port, f"/admin/guests/{name}", wasm, None, token=TOKEN, method="PUT")
                rows[name]["validation_ms"] = entry["validation_ms"]
            log(f"timing {', '.join(rows)}, taking turns")
            for name, clips in measure(port, list(rows), clip, args.requests).items():
                rows[name]["clips"] = clips
        finally:
            halt(proc, server_log)

    reference = rows["motion"]["clips"]
    lines = ["| guest | build | size | check | validation | instantiate (Y4M) | preprocess Y4M (× Rust) | preprocess PNG (× Rust) "
             "| preprocess 720p Y4M (× Rust) | p50 Y4M | p50 PNG |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        c = row["clips"]
        ratio = {form: c[form]["preprocess_ms"] / reference[form]["preprocess_ms"] for form in c}
        row["preprocess_vs_rust"] = ratio
        lines.append(
            f"| {name} ({row['lang']}) | {row.get('build_s', float('nan')):.1f} s | {row['bytes'] / 1e6:.2f} MB "
            f"| {row.get('check_s', float('nan')):.1f} s | {row.get('validation_ms', float('nan')):.0f} ms "
            f"| {c['y4m']['instantiate_ms'] * 1e3:.0f} µs "
            f"| {c['y4m']['preprocess_ms']:.2f} ms ({ratio['y4m']:.2f}×) | {c['png']['preprocess_ms']:.2f} ms ({ratio['png']:.2f}×) "
            f"| {c['y4m-hd']['preprocess_ms']:.2f} ms ({ratio['y4m-hd']:.2f}×) "
            f"| {c['y4m']['p50_ms']:.1f} ms | {c['png']['p50_ms']:.1f} ms |")
    print("\n".join(lines))
    python = rows["kit-python"]["preprocess_vs_rust"]
    met = python["y4m"] <= PYTHON_TARGET and python["png"] <= PYTHON_TARGET
    print(f"\ntarget: the Python guest's preprocessing within {PYTHON_TARGET}× the Rust guest's on both of the "
          f"benchmark's clips: {'met' if met else 'MISSED'} (Y4M {python['y4m']:.2f}×, PNG {python['png']:.2f}×; "
          f"720p Y4M {python['y4m-hd']:.2f}×)")
    out = ROOT / "bench/results/guests.json"
    out.write_text(json.dumps({"requests": args.requests, "guests": rows, "target_met": met}, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
