"""Races motion-host against the Python service it replaces and against Triton Inference
Server, on this machine, in one run.

Started by bench/run (which builds everything and installs the Python side). It makes the
benchmark clip, times the floor (a bare tch forward pass and the guest's preprocessing
compiled natively), then starts each server in turn and drives it with the compiled load
generator at each concurrency, with the clip as multipart PNG frames and as Y4M: motion-host and
the Python service over TLS on /v1/classify, Triton (which has no TLS on HTTP) over plain HTTP
on /v2/models/motion/infer with the clip as a BYTES input in the binary tensor extension. It
prints one table, checks the targets, and writes bench/results/<machine>.json and .png.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RELEASE = ROOT / "target" / "release"
WIDTH, HEIGHT, FRAMES = 320, 180, 16


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The benchmark clip


def make_clip(work: pathlib.Path) -> dict:
    """16 RGB frames of 320x180: a camera panning left over a textured scene (seeded), written
    as PNG files, as one multipart body of them, and as a Y4M of the same frames."""
    rng = np.random.default_rng(20261122)
    world_w = WIDTH + 6 * FRAMES
    y, x = np.mgrid[0:HEIGHT, 0:world_w].astype(np.float32)
    scene = np.zeros((HEIGHT, world_w, 3), np.float32)
    for c in range(3):
        for _ in range(6):
            fx, fy, phase = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.3)
            scene[..., c] += np.sin(x * fx + y * fy + phase)
    for _ in range(24):  # blocks, like objects in the scene
        x0, y0 = rng.integers(0, world_w - 30), rng.integers(0, HEIGHT - 30)
        scene[y0:y0 + rng.integers(8, 30), x0:x0 + rng.integers(8, 30)] += rng.uniform(-2, 2, 3)
    scene = (scene - scene.min()) / (scene.max() - scene.min()) * 255
    scene = np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
    frames = [scene[:, 6 * (FRAMES - 1 - t):6 * (FRAMES - 1 - t) + WIDTH] for t in range(FRAMES)]

    clip = work / "clip"
    clip.mkdir(parents=True, exist_ok=True)
    pngs = []
    for i, frame in enumerate(frames):
        path = clip / f"{i:03d}.png"
        Image.fromarray(frame).save(path)
        pngs.append(path)

    boundary = "motionbenchboundary7d1f"
    body = bytearray()
    for path in pngs:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"frames\"; "
                 f"filename=\"{path.name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    multipart = clip / "clip.multipart"
    multipart.write_bytes(bytes(body))

    y4m = clip / "clip.y4m"
    with open(y4m, "wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            ycc = Image.fromarray(frame).convert("YCbCr")
            yy, cb, cr = ycc.split()
            out.write(b"FRAME\n" + yy.tobytes())
            out.write(cb.resize((WIDTH // 2, HEIGHT // 2)).tobytes())
            out.write(cr.resize((WIDTH // 2, HEIGHT // 2)).tobytes())
    return {
        "pngs": pngs,
        "forms": {
            "png": (multipart, f"multipart/form-data; boundary={boundary}"),
            "y4m": (y4m, "video/x-yuv4mpeg"),
        },
    }


# ---------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(pid: int) -> list:
    """A process and its descendants (Triton's backend stubs are its children's children)."""
    children = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        stack.extend(children.get(p, []))
    return pids


def tree_cpu_s(pid: int) -> float:
    """CPU time (user and system, every thread) a process and its descendants have used, in s."""
    total = 0
    for p in tree_pids(pid):
        try:
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def tree_peak_rss_kib(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process and its descendants, summed."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Server:
    def __init__(self, name: str, label: str, argv: list, env: dict, port: int, cwd, logfile, health: str):
        self.name, self.label, self.argv, self.port, self.health = name, label, argv, port, health
        self.log = open(logfile, "wb")
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(self, ca: pathlib.Path, timeout: float = 120) -> float:
        started = time.monotonic()
        secure = self.health.startswith("https:")
        context = ssl.create_default_context(cafile=str(ca)) if secure else None
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.label} exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.health, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.label} was not healthy within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=40)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


def classify_client(port: int, form: str, clip: dict, work: pathlib.Path) -> dict:
    """How the load generator asks motion-host and the Python service: /v1/classify over TLS."""
    body, content_type = clip["forms"][form]
    return {"url": f"https://localhost:{port}/v1/classify", "body": body, "content_type": content_type,
            "headers": [], "health": f"https://localhost:{port}/health"}


def triton_client(port: int, form: str, clip: dict, work: pathlib.Path) -> dict:
    """How the load generator asks Triton: one /v2 inference request of the `motion` ensemble
    with the clip as BYTES (the Y4M stream as one element, or each PNG frame as one), in the
    binary tensor extension, as tritonclient sends it."""
    elements = [p.read_bytes() for p in clip["pngs"]] if form == "png" else [clip["forms"]["y4m"][0].read_bytes()]
    tensor = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    header = json.dumps({"inputs": [{"name": "media", "shape": [1, len(elements)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(tensor)}}],
                         "outputs": [{"name": "scores", "parameters": {"binary_data": False}}]}).encode()
    body = work / f"triton-{form}.bin"
    body.write_bytes(header + tensor)
    return {"url": f"http://127.0.0.1:{port}/v2/models/motion/infer", "body": body,
            "content_type": "application/octet-stream", "headers": [f"Inference-Header-Content-Length:{len(header)}"],
            "health": f"http://127.0.0.1:{port}/v2/health/ready"}


def triton_install() -> dict | None:
    """Where the Triton environment's server, libraries and packages are, asked of its Python
    (MOTION_BENCH_TRITON_PYTHON, which bench/run sets): it has a virtual environment apart from
    the Python service's, for nvidia-pytriton's numpy pin."""
    python = os.environ.get("MOTION_BENCH_TRITON_PYTHON")
    if not python or not pathlib.Path(python).exists():
        return None
    probe = ("import json, pathlib, site, sys, pytriton; p = pathlib.Path(pytriton.__file__).parent; "
             "print(json.dumps({'server': str(p / 'tritonserver'), 'libs': str(p.parent / 'nvidia_pytriton.libs'), "
             "'site': site.getsitepackages(), 'version': f'{sys.version_info.major}.{sys.version_info.minor}'}))")
    return json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout)


def triton_backends(install: dict, work: pathlib.Path) -> pathlib.Path:
    """A backend directory for tritonserver: the wheel's Python backend, with the stub built for
    the environment's Python where the backend looks for it."""
    server = pathlib.Path(install["server"])
    python = work / "triton-backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    stub = server / "python_backend_stubs" / install["version"] / "triton_python_backend_stub"
    for link, target in ((python / stub.name, stub),
                         *((python / f.name, f) for f in (server / "backends" / "python").iterdir())):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return python.parent


def cpu_has_bf16() -> bool:
    """Whether motion-host may run --precision bf16 on this CPU (as it checks: /proc/cpuinfo)."""
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    return False


def server_configs(args, certs: pathlib.Path, threads: int) -> list:
    """(name, label, start, client) for each server the run races: `start(port, logfile)` gives
    its argv, environment and directory, `client(port, form, clip, work)` how to ask it."""
    host = str(RELEASE / "motion-host")
    tls = ["--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")]
    model = ROOT / "models" / "motion-resnet18" / "model.pt"

    def motion_host(extra: list):
        def start(port, logfile):
            argv = [host, "serve", f"--bind=127.0.0.1:{port}", *tls, "--device", args.device,
                    "--inference-threads", str(threads), *extra]
            env = dict(os.environ, MOTION_HOST_STATE_FILE=str(logfile.with_suffix(".state.json")))
            return argv, env, ROOT
        return start

    def python(workers: int, torch_threads: int):
        def start(port, logfile):
            argv = [str(pathlib.Path(sys.executable).parent / "gunicorn"), "-k", "uvicorn.workers.UvicornWorker",
                    "-w", str(workers), "-b", f"127.0.0.1:{port}", "--certfile", str(certs / "tls.crt"),
                    "--keyfile", str(certs / "tls.key"), "--timeout", "120", "--log-level", "warning", "app:app"]
            env = dict(os.environ, MOTION_BASELINE_MODEL=str(model),
                       MOTION_BASELINE_TORCH_THREADS=str(torch_threads), OMP_NUM_THREADS=str(torch_threads))
            return argv, env, BENCH / "baseline"
        return start

    def triton(install: dict):
        def start(port, logfile):
            server, work = pathlib.Path(install["server"]), logfile.parent
            argv = [str(server / "bin" / "tritonserver"), f"--model-repository={BENCH / 'triton' / 'models'}",
                    f"--backend-directory={triton_backends(install, work)}", f"--http-port={port}",
                    "--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false", "--log-verbose=0"]
            libs = [install["libs"], os.environ.get("LD_LIBRARY_PATH", "")]
            env = dict(os.environ, MOTION_TRITON_MODEL=str(model), MOTION_TRITON_TORCH_THREADS=str(threads),
                       MOTION_TRITON_PATH=os.pathsep.join([*install["site"], str(BENCH / "baseline")]),
                       LD_LIBRARY_PATH=os.pathsep.join(filter(None, libs)))
            return argv, env, work
        return start

    configs = [
        ("motion-host", "motion-host", motion_host([]), classify_client),
        *([("motion-host-bf16", "motion-host, --precision bf16", motion_host(["--precision", "bf16"]),
            classify_client)] if cpu_has_bf16() else []),
        ("motion-host-unbatched", "motion-host, --max-batch-size 1", motion_host(["--max-batch-size", "1"]),
         classify_client),
    ]
    if not args.skip_python:
        configs += [
            ("python-1x2", f"Python, 1 worker x {threads} threads", python(1, threads), classify_client),
            ("python-2x1", f"Python, {max(2, threads)} workers x 1 thread", python(max(2, threads), 1),
             classify_client),
        ]
    if not args.skip_triton:
        install = triton_install()
        if install:
            configs.append(("triton", "Triton, Python backend, dynamic batching", triton(install), triton_client))
        else:
            log("Triton is not installed (MOTION_BENCH_TRITON_PYTHON): racing without it")
    return [c for c in configs if not args.only or c[0] in args.only]


# ---------------------------------------------------------------------------------------------
# The run


def machine() -> dict:
    cpu = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(pathlib.Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each point")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--device", default="cpu", help="motion-host's --device (cpu, cuda, auto)")
    parser.add_argument("--only", nargs="*", help="run only these servers (names as in the table)")
    parser.add_argument("--skip-python", action="store_true", help="leave the Python service out")
    parser.add_argument("--skip-triton", action="store_true", help="leave Triton out")
    parser.add_argument("--runs", type=int, default=1,
                        help="full runs, one after another; with more than one, each is written as "
                             "<tag>-run<N> and a target counts as met if it is in the median run")
    parser.add_argument("--tag", help="results file name (default: from the machine)")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    tag = args.tag or f"{'cuda' if args.device.startswith('cuda') else 'cpu'}-{threads}core"
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    every = []
    for n in range(1, args.runs + 1):
        if args.runs > 1:
            log(f"run {n} of {args.runs}")
        results = race(args, threads, n - 1)
        name = f"{tag}-run{n}" if args.runs > 1 else tag
        (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        print(table(results), flush=True)
        plot(results, out_dir / f"{name}.png")
        log(f"wrote {out_dir / (name + '.json')} and {out_dir / (name + '.png')}")
        every.append(results)
    if len(every) > 1:
        print(median_summary(every))


def race(args, threads: int, rotation: int = 0) -> dict:
    """One full run: the floor, then every server at every concurrency on both clips. The
    servers take turns in their listed order rotated by `rotation`: the machine's speed drifts
    over a run, and with several runs each server starts a run in turn rather than always
    meeting the same part of the drift."""
    levels = [int(c) for c in args.concurrency.split(",")]
    work = ROOT / "target" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    certs = work / "tls"
    subprocess.run([str(RELEASE / "loadgen"), "cert", "--dir", str(certs)], check=True)
    clip = make_clip(work)

    log("timing the floor: bare forward pass and native preprocessing")
    def time_floor(out: pathlib.Path, *extra: str) -> dict:
        subprocess.run([str(RELEASE / "floor"), "--model", str(ROOT / "models/motion-resnet18/model.pt"),
                        "--threads", str(threads), *extra, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())

    def clip_args(form: str) -> list:
        """The floor's arguments naming one form of the clip."""
        if form == "png":
            return sum((["--png", str(p)] for p in clip["pngs"]), [])
        return ["--y4m", str(clip["forms"]["y4m"][0])]

    def floor_of(form: str) -> dict:
        """The fp32 floor with one clip's native preprocessing: what a point beside it is held to."""
        timed = time_floor(work / f"floor-{form}.json", *clip_args(form))
        return {"forward_ms": timed["forward_ms"], "prepare_ms": timed["prepare_ms"]}

    fp32_floor = lambda: time_floor(work / "floor.json", *clip_args("png"), *clip_args("y4m"))
    floor = fp32_floor()
    floor_timings = [{"forward_ms": floor["forward_ms"], "prepare_ms": floor["prepare_ms"]}]
    # The server optimises the model for inference as it loads (unless --plain-model), and so
    # does the floor above: the module as its file has it, timed too, shows what that gains.
    floor["forward_plain_ms"] = time_floor(work / "floor-plain.json", "--plain-model")["forward_ms"]
    if cpu_has_bf16():
        floor["forward_bf16_ms"] = time_floor(work / "floor-bf16.json", "--precision", "bf16")["forward_ms"]
    else:
        log("this CPU has neither avx512_bf16 nor amx_bf16: no bf16 row")

    runs, servers, exchanges = [], {}, {}
    configs = server_configs(args, certs, threads)
    turn = rotation % max(1, len(configs))
    configs = configs[turn:] + configs[:turn]
    for config in configs:
        name, label = config[:2]
        for form in clip["forms"]:
            log(f"{label}: starting for {form}")
            server, ask = launch(config, form, clip, work, work / f"{name}-{form}.log")
            try:
                healthy_s = server.wait_healthy(certs / "tls.crt")
                servers[name] = {"label": label, "argv": server.argv, "url": ask["url"],
                                 "start_to_healthy_s": round(healthy_s, 2)}
                for c in levels:
                    out = work / f"{name}-{form}-c{c}.json"
                    beside = name == "motion-host" and c in FLOOR_BESIDE
                    before = floor_of(form) if beside else None
                    # CPU used during the point (warm-up included), as cores kept busy.
                    wall, server_cpu, loadgen_cpu = drive_timed(server, ask, c, args.warmup, args.duration, out, certs)
                    result = json.loads(out.read_text())
                    result.update(server=name, form=form, peak_rss_mib=round(tree_peak_rss_kib(server.process.pid) / 1024, 1),
                                  server_cores=round(server_cpu / wall, 2), loadgen_cores=round(loadgen_cpu / wall, 2))
                    if beside:
                        result["floor_beside"] = faster_of([before, floor_of(form)])
                    runs.append(result)
                if name == "motion-host":
                    log(f"{label}: the HTTPS exchange alone for {form}")
                    exchanges[form] = exchange(server, ask, form, work, certs)
            finally:
                server.stop()

    # The sweep meets each server at another moment of the machine's drift; the comparison with
    # the best rival at c=16 is taken again with both servers up and driven in turn.
    duels = {}
    by_name = {config[0]: config for config in configs}
    for form in clip["forms"]:
        rival = best_rival({"runs": runs}, form, DUEL_CONCURRENCY)
        if "motion-host" in by_name and rival:
            log(f"motion-host and {rival['server']} taking turns at c={DUEL_CONCURRENCY} on {form}")
            duels[form] = duel(args, [by_name["motion-host"], by_name[rival["server"]]], form, clip, certs, work)

    # This machine's speed drifts over a run. The floor is what it can do at best, so it is timed
    # again after the servers and each figure is the faster of the two timings: a slow first
    # timing would lower the limit and flatter every share of it.
    log("timing the floor again")
    again = fp32_floor()
    floor_timings.append({"forward_ms": again["forward_ms"], "prepare_ms": again["prepare_ms"]})
    floor.update(faster_of(floor_timings))

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "device": args.device,
        "clip": {"frames": FRAMES, "width": WIDTH, "height": HEIGHT,
                 "bytes": {form: body.stat().st_size for form, (body, _) in clip["forms"].items()}},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "concurrency": levels,
                     "threads": threads, "order": [config[0] for config in configs]},
        "floor": floor,
        "servers": servers,
        "runs": runs,
        "exchange": exchanges,
        "duels": duels,
    }
    results["targets"] = targets(results)
    return results


def launch(config: tuple, form: str, clip: dict, work: pathlib.Path, logfile: pathlib.Path) -> tuple:
    """Starts one server of `server_configs` on a free port for `form`: the Server, and what its
    client sends it (`ask`)."""
    name, label, start, client = config
    port = free_port()
    argv, env, cwd = start(port, logfile)
    ask = client(port, form, clip, work)
    return Server(name, label, argv, env, port, cwd, logfile, ask["health"]), ask


def drive(ask: dict, c: int, warmup: float, duration: float, out: pathlib.Path, certs: pathlib.Path,
          expect: int | None = None) -> None:
    """One point: the load generator at `c` clients against a server, its figures in `out`;
    with `expect`, answers of that status are the ones counted."""
    headers = sum((["--header", h] for h in ask["headers"]), [])
    subprocess.run([str(RELEASE / "loadgen"), "run", "--url", ask["url"], "--body", str(ask["body"]),
                    "--content-type", ask["content_type"], *headers, "--ca", str(certs / "tls.crt"),
                    "-c", str(c), "--warmup", str(warmup), "--duration", str(duration), "--out", str(out),
                    *(["--expect-status", str(expect)] if expect else [])],
                   check=True)


def drive_timed(server: "Server", ask: dict, c: int, warmup: float, duration: float, out: pathlib.Path,
                certs: pathlib.Path, expect: int | None = None) -> tuple:
    """`drive`, and what it took: wall seconds, and CPU seconds of the server (with its child
    processes) and of the load generator."""
    wall, server_cpu = time.monotonic(), tree_cpu_s(server.process.pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    drive(ask, c, warmup, duration, out, certs, expect)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.monotonic() - wall, tree_cpu_s(server.process.pid) - server_cpu,
            (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


# The HTTPS exchange alone: the clip's body posted to motion-host's /v1/classify under a media
# type no guest accepts, so the server reads all of it (TLS, HTTP, the upload's buffer) and
# answers 415 without parsing or classifying it. No server of this product leaves that work
# out, and the floor has none of it: the arithmetic of the targets on the limit and on latency
# alone counts it.
EXCHANGE_TYPE = "application/x-motion-bench-exchange"
EXCHANGE_SECONDS = 5.0


def exchange(server: "Server", ask: dict, form: str, work: pathlib.Path, certs: pathlib.Path) -> dict:
    """The exchange alone at 1 and 16 clients: its rate, latency, and the CPU a request costs the
    server and the load generator."""
    refused = {**ask, "content_type": EXCHANGE_TYPE}
    points = {}
    for c in FLOOR_BESIDE:
        out = work / f"exchange-{form}-c{c}.json"
        wall, server_cpu, loadgen_cpu = drive_timed(server, refused, c, 1.0, EXCHANGE_SECONDS, out, certs, expect=415)
        result = json.loads(out.read_text())
        rate = result["requests_per_s"]
        # CPU a request: the cores each side kept busy over the point, at its rate.
        per_request = lambda cpu_s: round(cpu_s / wall / rate * 1000, 3) if rate else None
        points[str(c)] = {"requests_per_s": rate, "p50_ms": result["latency_ms"]["p50"],
                          "p99_ms": result["latency_ms"]["p99"], "failures": result["failures"],
                          "server_cpu_ms": per_request(server_cpu), "loadgen_cpu_ms": per_request(loadgen_cpu)}
    return points


# Where motion-host meets its best rival at c=16 a second time: both up at once, driven in turn
# for DUEL_SECONDS each, DUEL_PAIRS times, the order alternating, so both meet the same part of
# the machine's drift. The target on throughput at c=16 is held to these pairs.
DUEL_CONCURRENCY = 16
DUEL_PAIRS = 5
DUEL_SECONDS = 5.0


def duel(args, pair: list, form: str, clip: dict, certs: pathlib.Path, work: pathlib.Path) -> dict:
    """Starts the two servers of `pair` (configs as `server_configs` gives them) side by side and
    drives them in turn; each pair's figures and the median of the throughput ratios."""
    started = []
    try:
        for config in pair:
            started.append(launch(config, form, clip, work, work / f"{config[0]}-{form}-duel.log"))
        for server, _ in started:
            server.wait_healthy(certs / "tls.crt")
        pairs = []
        for n in range(DUEL_PAIRS):
            turns = started if n % 2 == 0 else started[::-1]
            figures = {}
            for server, ask in turns:
                out = work / f"duel-{form}-{server.name}-{n}.json"
                drive(ask, DUEL_CONCURRENCY, args.warmup, DUEL_SECONDS, out, certs)
                result = json.loads(out.read_text())
                figures[server.name] = {"requests_per_s": result["requests_per_s"],
                                        "p50_ms": result["latency_ms"]["p50"], "p99_ms": result["latency_ms"]["p99"],
                                        "failures": result["failures"]}
            pairs.append({"first": turns[0][0].name, **figures})
    finally:
        for server, _ in started:
            server.stop()
    host, rival = pair[0][0], pair[1][0]
    middle = lambda values: sorted(values)[(len(values) - 1) // 2]
    return {"rival": rival, "concurrency": DUEL_CONCURRENCY, "seconds": DUEL_SECONDS, "pairs": pairs,
            "ratio": middle([p[host]["requests_per_s"] / p[rival]["requests_per_s"] for p in pairs]),
            "p99_ms": {name: middle([p[name]["p99_ms"] for p in pairs]) for name in (host, rival)}}


# The points of motion-host's whose targets compare it with the floor (latency alone at c=1; the
# share of the limit and the forward per row at c=16) have the floor timed beside them too.
FLOOR_BESIDE = (1, 16)


def faster_of(timings: list) -> dict:
    """Each figure of the floor the fastest of `timings` gave, with the timings kept."""
    return {**{part: {key: min(t[part][key] for t in timings) for key in timings[0][part]}
               for part in ("forward_ms", "prepare_ms")}, "timings": timings}


def floor_for(results: dict, point: dict) -> dict:
    """The floor a point is held to: the one timed just before and after it where there is one,
    else the run's. The machine's speed drifts by up to 2x within minutes, so a floor timed ten
    minutes away measures another machine."""
    return point.get("floor_beside") or results["floor"]


def floor_source(point: dict) -> str:
    """Which floor a target's figure is against, for its detail."""
    return "the floor timed beside the point" if "floor_beside" in point else "the run's floor"


def run_floor_says(point: dict, value: float) -> str:
    """Where a point was held to the floor beside it, what the run's floor would have made of it."""
    return f" (against the run's floor: {value:.3f})" if "floor_beside" in point else ""


def median_summary(every: list) -> str:
    """Each target's value in every run, and whether the median run meets it."""
    lines = ["", f"targets over {len(every)} runs (a target counts if the median run meets it):"]
    names = [t["target"] for t in every[0]["targets"]]
    for name in names:
        seen = [t for results in every for t in results["targets"] if t["target"] == name]
        # The median run for this target: its value in the middle when sorted.
        ordered = sorted(seen, key=lambda t: (t["value"] is None, t["value"] or 0))
        middle = ordered[(len(ordered) - 1) // 2]
        values = ", ".join("-" if t["value"] is None else f"{t['value']}" for t in seen)
        lines.append(f"{'MET ' if middle['met'] else 'MISS'} {name}: {values} (goal {middle['goal']}; "
                     f"median run {middle['value']})")
    return "\n".join(lines)


def find(results: dict, server: str, form: str, c: int):
    for run in results["runs"]:
        if run["server"] == server and run["form"] == form and run["concurrency"] == c:
            return run
    return None


PYTHONS = ("python-1x2", "python-2x1")
RIVALS = (*PYTHONS, "triton")


def best_rival(results: dict, form: str, c: int):
    """The fastest of the servers motion-host is raced against, at this point."""
    candidates = [r for s in RIVALS if (r := find(results, s, form, c))]
    return max(candidates, key=lambda r: r["requests_per_s"], default=None)


def limit_rps(results: dict, form: str, floor: dict | None = None) -> float:
    """What this machine allows: every core busy, each request costing its share of a batch-16
    forward pass (all cores) plus its native preprocessing spread over the cores. From the run's
    floor unless another is given."""
    floor, cores = floor or results["floor"], results["machine"]["cpus"]
    return 1000.0 / (floor["forward_ms"]["16"] / 16 + floor["prepare_ms"][form] / cores)


def guest_ms(point: dict) -> float:
    """The guest's own time at a point: its preprocess stage less instantiation, p50."""
    stages = point["stages_p50_ms"]
    return stages.get("preprocess", 0) - stages.get("instantiate", 0)


def limit_arithmetic(results: dict, form: str, host16: dict, host1: dict | None, beside: dict) -> str:
    """What 0.8 of the limit leaves a request, as CPU on all the cores, once the work no server
    of this product leaves out is counted: the bare forward, the HTTPS exchange alone (both
    sides, since the load generator shares the cores) and the guest at its own speed."""
    ex = results.get("exchange", {}).get(form, {}).get("16")
    if not ex or not host1 or ex["server_cpu_ms"] is None:
        return ""
    cores = results["machine"]["cpus"]
    budget = cores * 1000 / (0.8 * limit_rps(results, form, beside))
    bare_row = beside["forward_ms"]["16"] / 16
    exchanged = ex["server_cpu_ms"] + ex["loadgen_cpu_ms"]
    guest = guest_ms(host1)
    left = budget - bare_row * cores - exchanged - guest
    text = (f"; at 0.8 a request may use {budget:.2f} ms of CPU on the {cores} cores: the bare forward takes "
            f"{bare_row * cores:.2f}, the HTTPS exchange alone {exchanged:.2f} (server {ex['server_cpu_ms']:.2f}, "
            f"load generator {ex['loadgen_cpu_ms']:.2f}), the guest {guest:.2f} (its p50 at c=1), leaving "
            f"{left:.2f} ms for all the rest")
    per_row = host16.get("inference_per_row_ms")
    if per_row:
        text += f", of which the forward's excess under load took {(per_row - bare_row) * cores:.2f} at this point"
    return text


def latency_arithmetic(results: dict, form: str, host1: dict, beside: dict) -> str:
    """What 1.25 times the floor leaves a request at c=1 beyond the HTTPS exchange alone, the
    guest's time over native and the inference stage's over the bare forward."""
    ex = results.get("exchange", {}).get(form, {}).get("1")
    if not ex or not ex["requests_per_s"]:
        return ""
    allowance = 0.25 * (beside["forward_ms"]["1"] + beside["prepare_ms"][form])
    guest_over = guest_ms(host1) - beside["prepare_ms"][form]
    inference_over = host1["stages_p50_ms"].get("inference", 0) - beside["forward_ms"]["1"]
    left = allowance - ex["p50_ms"] - guest_over - inference_over
    return (f"; 1.25 allows {allowance:.2f} ms over the floor: the HTTPS exchange alone takes {ex['p50_ms']:.2f} "
            f"(p50), the guest {guest_over:.2f} over native, the inference stage {inference_over:.2f} over the bare "
            f"forward (p50), leaving {left:.2f} ms for the rest of the server's work")


def targets(results: dict) -> list:
    """Each target of the benchmark: the measured value, the goal, and whether it is met."""
    out = []

    def add(name, value, goal, met, detail):
        out.append({"target": name, "value": None if value is None else round(value, 3), "goal": goal,
                    "met": met, "detail": detail})

    floor = results["floor"]
    levels = results["settings"]["concurrency"]
    for form in ("png", "y4m"):
        host16, rival16 = find(results, "motion-host", form, 16), best_rival(results, form, 16)
        duel = results.get("duels", {}).get(form)
        if host16 and rival16:
            swept = (f"{host16['requests_per_s']:.1f} vs {rival16['requests_per_s']:.1f} req/s ({rival16['server']}); "
                     f"p99 {host16['latency_ms']['p99']:.0f} vs {rival16['latency_ms']['p99']:.0f} ms")
            if duel:
                rival = duel["rival"]
                ratio = duel["ratio"]
                p99_ok = duel["p99_ms"]["motion-host"] <= duel["p99_ms"][rival]
                ratios = ", ".join(f"{p['motion-host']['requests_per_s'] / p[rival]['requests_per_s']:.2f}"
                                   for p in duel["pairs"])
                detail = (f"median of {len(duel['pairs'])} pairs taken in turn with {rival} ({ratios}); median p99 "
                          f"{duel['p99_ms']['motion-host']:.0f} vs {duel['p99_ms'][rival]:.0f} ms (in the sweep: {swept})")
            else:
                ratio = host16["requests_per_s"] / rival16["requests_per_s"]
                p99_ok = host16["latency_ms"]["p99"] <= rival16["latency_ms"]["p99"]
                detail = swept
            add(f"throughput at c=16 vs the best rival ({form})", ratio, ">= 1.5 and p99 no worse",
                ratio >= 1.5 and p99_ok, detail)
        pairs = [(c, h, r) for c in levels
                 if (h := find(results, "motion-host", form, c)) and (r := best_rival(results, form, c))]
        if pairs:
            ratios = [(c, h["requests_per_s"] / r["requests_per_s"], h["latency_ms"]["p99"] <= r["latency_ms"]["p99"])
                      for c, h, r in pairs]
            worst = min(ratio for _, ratio, _ in ratios)
            add(f"throughput at every c vs the best rival ({form})", worst, ">= 1.1 and p99 no worse at each",
                all(ratio >= 1.1 and p99_ok for _, ratio, p99_ok in ratios),
                ", ".join(f"c={c} {ratio:.2f}x{'' if ok else ' (p99 worse)'}" for c, ratio, ok in ratios))
        host1 = find(results, "motion-host", form, 1)
        if host16:
            beside = floor_for(results, host16)
            where = floor_source(host16)
            def share_of(f):
                return host16["requests_per_s"] / limit_rps(results, form, f)
            share = share_of(beside)
            add(f"share of the machine's limit at c=16 ({form})", share, ">= 0.8", share >= 0.8,
                f"{host16['requests_per_s']:.1f} of {limit_rps(results, form, beside):.1f} req/s = 1000 / ({beside['forward_ms']['16']:.1f}/16 "
                f"+ {beside['prepare_ms'][form]:.2f}/{results['machine']['cpus']}), {where}"
                + run_floor_says(host16, share_of(floor)) + limit_arithmetic(results, form, host16, host1, beside))
            per_row = host16.get("inference_per_row_ms")
            if per_row:
                def per_row_of(f):
                    return per_row / (f["forward_ms"]["16"] / 16)
                ratio = per_row_of(beside)
                add(f"forward per row under load at c=16 ({form})", ratio, "<= 1.2", ratio <= 1.2,
                    f"{per_row:.2f} ms a row in the server's inference stage (batch {host16.get('mean_batch_size') or 0:.1f}) "
                    f"vs {beside['forward_ms']['16'] / 16:.2f} ms bare at batch 16, {where}"
                    + run_floor_says(host16, per_row_of(floor)))
        if host1:
            beside = floor_for(results, host1)
            where = floor_source(host1)
            def alone_of(f):
                return host1["latency_ms"]["p50"] / (f["forward_ms"]["1"] + f["prepare_ms"][form])
            ratio = alone_of(beside)
            add(f"latency alone at c=1 ({form})", ratio, "<= 1.25", ratio <= 1.25,
                f"p50 {host1['latency_ms']['p50']:.1f} ms vs forward {beside['forward_ms']['1']:.1f} + "
                f"native preprocessing {beside['prepare_ms'][form]:.2f} ms, {where}"
                + run_floor_says(host1, alone_of(floor)) + latency_arithmetic(results, form, host1, beside))
            stages = host1["stages_p50_ms"]
            wasm = guest_ms(host1)
            def wasm_of(f):
                return wasm / f["prepare_ms"][form]
            ratio = wasm_of(beside)
            add(f"preprocessing wasm vs native ({form})", ratio, "<= 1.5", ratio <= 1.5,
                f"{wasm:.2f} ms in the guest (preprocess stage less instantiation, p50) vs "
                f"{beside['prepare_ms'][form]:.2f} ms native, {where}" + run_floor_says(host1, wasm_of(floor)))
            if "instantiate" in stages:
                us = stages["instantiate"] * 1000
                add(f"instantiation per request ({form})", us, "<= 50 us median", us <= 50,
                    f"{us:.0f} us median: a fresh store and instance, measured in the host")
        host64 = find(results, "motion-host", form, 64)
        pythons = [r for s in PYTHONS if (r := find(results, s, form, 64))]
        if host64 and pythons:
            lowest = min(pythons, key=lambda r: r["peak_rss_mib"])
            add(f"peak memory at c=64 vs the leaner Python ({form})", host64["peak_rss_mib"],
                f"< {lowest['peak_rss_mib']:.0f} MiB", host64["peak_rss_mib"] < lowest["peak_rss_mib"],
                f"{host64['peak_rss_mib']:.0f} vs {lowest['peak_rss_mib']:.0f} MiB ({lowest['server']})")
    return out


def table(results: dict) -> str:
    header = ["server", "clip", "c", "req/s", "of limit", "p50 ms", "p99 ms", "instantiate", "preprocess",
              "queue", "inference", "per row", "postprocess", "batch", "peak RSS MiB", "cores", "loadgen", "failed"]
    rows = []
    for r in results["runs"]:
        stages = r.get("stages_ms", {})
        stage = lambda k: f"{stages[k]:.2f}" if k in stages else "-"
        batch = r.get("mean_batch_size")
        per_row = r.get("inference_per_row_ms")
        rows.append([r["server"], r["form"], str(r["concurrency"]), f"{r['requests_per_s']:.1f}",
                     f"{r['requests_per_s'] / limit_rps(results, r['form']):.0%}",
                     f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}", stage("instantiate"),
                     stage("preprocess"), stage("queue"), stage("inference"),
                     f"{per_row:.2f}" if per_row else "-", stage("postprocess"),
                     f"{batch:.1f}" if batch else "-", f"{r['peak_rss_mib']:.0f}",
                     f"{r['server_cores']:.2f}" if "server_cores" in r else "-",
                     f"{r['loadgen_cores']:.2f}" if "loadgen_cores" in r else "-",
                     str(sum(r["failures"].values()))])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    m = results["machine"]
    floor = results["floor"]
    lines = [f"motion-host benchmark, {results['date']}, {m['cpu']} ({m['cpus']} CPUs, {m['memory_gib']} GiB), "
             f"device {results['device']}",
             f"clip: {FRAMES} frames {WIDTH}x{HEIGHT}, multipart PNG {results['clip']['bytes']['png']} bytes, "
             f"Y4M {results['clip']['bytes']['y4m']} bytes; stage times are means in ms as each server reports them",
             "motion-host and Python answer /v1/classify over TLS; Triton (no TLS on HTTP) answers "
             "/v2/models/motion/infer over plain HTTP, the clip as a BYTES input",
             "", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(row) for row in rows]
    timings = len(floor.get("timings", []))
    lines += ["", (f"floor (the faster of {timings} timings, before and after the servers): " if timings > 1 else "floor: ") +
                  f"bare forward {floor['forward_ms']['1']:.1f} ms at batch 1, "
                  f"{floor['forward_ms']['16']:.1f} ms at batch 16 ({floor['forward_ms']['16'] / 16:.1f} ms a row); "
                  f"native preprocessing {floor['prepare_ms']['png']:.2f} ms (PNG), "
                  f"{floor['prepare_ms']['y4m']:.2f} ms (Y4M)",
              *([f"plain floor (the module as its file has it, not optimised for inference): bare forward "
                 f"{floor['forward_plain_ms']['1']:.1f} ms at batch 1, {floor['forward_plain_ms']['16']:.1f} ms at "
                 f"batch 16"] if "forward_plain_ms" in floor else []),
              *([f"bf16 floor: bare forward {floor['forward_bf16_ms']['1']:.1f} ms at batch 1, "
                 f"{floor['forward_bf16_ms']['16']:.1f} ms at batch 16 (the limit and targets stay at fp32)"]
                if "forward_bf16_ms" in floor else []),
              f"limit (1000 / (forward at 16 / 16 + native preprocessing / {m['cpus']} cores)): "
              f"{limit_rps(results, 'png'):.1f} req/s (PNG), {limit_rps(results, 'y4m'):.1f} req/s (Y4M); "
              "'of limit' is each point's share of it; 'cores' and 'loadgen' are the CPU the server (with its "
              "child processes) and the load generator kept busy during the point, in cores",
              *[f"floor beside {r['server']} {r['form']} c={r['concurrency']} (the faster of a timing just before "
                f"and one just after): forward {r['floor_beside']['forward_ms']['1']:.1f} ms at batch 1, "
                f"{r['floor_beside']['forward_ms']['16']:.1f} at batch 16; native preprocessing "
                f"{r['floor_beside']['prepare_ms'][r['form']]:.2f} ms; the targets on this point are held to it"
                for r in results["runs"] if "floor_beside" in r],
              *[f"the HTTPS exchange alone on {form} (the body read whole by motion-host, then refused with 415): "
                f"c=1 p50 {e['1']['p50_ms']:.2f} ms; c=16 {e['16']['requests_per_s']:.0f} req/s, "
                f"{e['16']['server_cpu_ms']:.2f} ms of the server's CPU and {e['16']['loadgen_cpu_ms']:.2f} ms of the "
                "load generator's a request"
                for form, e in results.get("exchange", {}).items() if e["16"]["server_cpu_ms"] is not None],
              *[f"motion-host and {d['rival']} in turn at c={d['concurrency']} on {form}, {d['seconds']:.0f} s each: "
                + "; ".join(f"{p['motion-host']['requests_per_s']:.1f} vs {p[d['rival']]['requests_per_s']:.1f} req/s"
                            for p in d["pairs"])
                + f" (median ratio {d['ratio']:.2f})"
                for form, d in results.get("duels", {}).items()], ""]
    for t in results["targets"]:
        lines.append(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['value']} (goal {t['goal']}) - {t['detail']}")
    return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    # One colour a server, one line style a clip: with more servers than the default cycle's
    # ten colours, two servers would otherwise share one.
    colours = plt.get_cmap("tab10")
    for index, (server, info) in enumerate(results["servers"].items()):
        for form, style in (("png", "-o"), ("y4m", "--s")):
            runs = sorted((r for r in results["runs"] if r["server"] == server and r["form"] == form),
                          key=lambda r: r["concurrency"])
            if not runs:
                continue
            c = [r["concurrency"] for r in runs]
            colour = colours(index % colours.N)
            left.plot(c, [r["requests_per_s"] for r in runs], style, color=colour, label=f"{info['label']} ({form})")
            right.plot(c, [r["latency_ms"]["p99"] for r in runs], style, color=colour, label=f"{info['label']} ({form})")
    for ax, title, unit in ((left, "throughput", "requests/s"), (right, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"motion-host vs the Python service and Triton - {m['cpu']}, {m['cpus']} CPUs, {results['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
