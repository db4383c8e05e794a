"""The Open Inference Protocol under load: motion-host's two models (the raw network, and the
`motion-classifier` pipeline on examples/clip.y4m) driven at each concurrency by the benchmark's
load generator over REST (binary tensors, HTTP/1.1) and by Triton's perf_analyzer over REST and
over gRPC (plain HTTP/2), against one server on this machine. Prints one table and writes
bench/results/protocols.json.

Started by bench/protocols, which builds the server and the load generator and installs
perf_analyzer (MOTION_HOST_PERF_ANALYZER).
"""

import argparse
import base64
import csv
import datetime
import json
import os
import pathlib
import platform
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from attack import halt, launch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
CLIP = ROOT / "examples" / "clip.y4m"
ROW = (8, 112, 112)


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def bodies(work):
    """Each model's request: the loadgen's body (JSON header + binary tensor) and headers, and
    perf_analyzer's arguments for the same input."""
    floats = struct.pack(f"<{8 * 112 * 112}f", *([0.25] * (8 * 112 * 112)))
    clip = CLIP.read_bytes()
    element = len(clip).to_bytes(4, "little") + clip
    data = work / "media.json"
    data.write_text(json.dumps({"data": [{"media": {"b64": base64.b64encode(element).decode(), "shape": [1]}}]}))
    models = {}
    for model, name, shape, datatype, tensor, pa in [
        ("motion-resnet18", "input", [1, *ROW], "FP32", floats, ["--shape", "input:8,112,112"]),
        ("motion-classifier", "media", [1], "BYTES", element, ["--input-data", str(data)]),
    ]:
        header = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                         "parameters": {"binary_data_size": len(tensor)}}],
                             "parameters": {"binary_data_output": True}}).encode()
        body = work / f"{model}.bin"
        body.write_bytes(header + tensor)
        models[model] = {"body": body, "header_length": len(header), "perf_analyzer": pa}
    return models


def wait_ready(port, proc):
    """Waits for /v2/health/ready: the models and guests loaded."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("the server did not become ready")


def loadgen(port, model, spec, c, args, work):
    out = work / f"loadgen-{model}-{c}.json"
    subprocess.run([RELEASE / "loadgen", "run", "--url", f"http://127.0.0.1:{port}/v2/models/{model}/infer",
                    "--body", spec["body"], "--content-type", "application/octet-stream",
                    "--header", f"Inference-Header-Content-Length:{spec['header_length']}",
                    "-c", str(c), "--warmup", str(args.warmup), "--duration", str(args.duration),
                    "--out", out], check=True, stdout=subprocess.DEVNULL)
    r = json.loads(out.read_text())
    if r["failures"]:
        sys.exit(f"the load generator saw failures on {model} at {c} clients: {r['failures']}")
    return {"rps": r["requests_per_s"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
            "failures": sum(r["failures"].values())}


def perf_analyzer(port, model, spec, c, protocol, args, work):
    out = work / f"pa-{model}-{protocol}-{c}.csv"
    argv = [os.environ["MOTION_HOST_PERF_ANALYZER"], "-m", model, "-i", protocol, "-u", f"127.0.0.1:{port}",
            "--shared-memory", "none", "--concurrency-range", f"{c}:{c}",
            "--measurement-interval", str(int(args.duration * 1000)), "-f", str(out)] + spec["perf_analyzer"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"perf_analyzer -i {protocol} -m {model} -c {c} failed:\n{done.stdout}\n{done.stderr}")
    row = next(csv.DictReader(out.open()))
    return {"rps": float(row["Inferences/Second"]), "p50_ms": int(row["p50 latency"]) / 1000,
            "p99_ms": int(row["p99 latency"]) / 1000, "failures": 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement window")
    parser.add_argument("--warmup", type=float, default=2.0, help="the load generator's warm-up, in seconds")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "date": datetime.date.today().isoformat()},
               "clip": CLIP.name, "duration_s": args.duration, "points": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        models = bodies(work)
        proc, server_log, port = launch(str(RELEASE / "motion-host"), tmp,
                                        [f"--guest=motion={ROOT}/target/wasm32-wasip2/release/motion_guest.wasm",
                                         f"--tls-dir={tmp}/none"])
        try:
            wait_ready(port, proc)
            for model, spec in models.items():
                for c in concurrency:
                    point = {"model": model, "concurrency": c}
                    log(f"{model}, {c} clients: loadgen (REST)")
                    point["loadgen_rest"] = loadgen(port, model, spec, c, args, work)
                    for protocol in ("http", "grpc"):
                        log(f"{model}, {c} clients: perf_analyzer ({protocol})")
                        point[f"perf_analyzer_{protocol}"] = perf_analyzer(port, model, spec, c, protocol, args, work)
                    results["points"].append(point)
        finally:
            halt(proc, server_log)
    print(table(results))
    out = ROOT / "bench" / "results" / "protocols.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out.relative_to(ROOT)}")


def table(results):
    clients = [("loadgen_rest", "loadgen REST"), ("perf_analyzer_http", "perf_analyzer REST"),
               ("perf_analyzer_grpc", "perf_analyzer gRPC")]
    head = "| model | c | " + " | ".join(f"{label} req/s, p50, p99 ms" for _, label in clients) + " |"
    lines = [head, "|" + "---|" * (2 + len(clients))]
    for p in results["points"]:
        cells = [f"{p[k]['rps']:.1f}, {p[k]['p50_ms']:.1f}, {p[k]['p99_ms']:.1f}" for k, _ in clients]
        lines.append(f"| {p['model']} | {p['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
