"""Soaks motion-host: 16 clients send a mix of valid, invalid and abandoned requests over TLS
while the default guest is swapped every 20 s, a canary runs every few minutes (promoted or
rolled back in turn), and the certificate is rotated every minute. Resident memory (the median
of 11 readings over 5 s), open descriptors and threads are sampled each minute. Prints a table and writes a JSON file (and a
plot, where matplotlib is installed).

    bench/soak [--duration 1800] [--out bench/results/soak.json]
    bench/soak --ci --duration 120 --out /tmp/soak.json   # the test suite's short run

Every answer is checked: a valid request must get 200 with the label that the version which
answered (its X-Guest-Digest) gives this clip; an invalid one its documented 4xx code. A request
that gets no answer is lost. Passes when nothing is lost or wrong and, for a full run, resident
memory over the last 10 minutes stays within +-2 % of its mean and descriptors and threads end
where they were at minute 10; for --ci, descriptors end within 5 of where they started (besides
the one memory image each guest version kept for rollback holds, which must match the versions
held) and threads stay within a fixed bound.
"""

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from attack import ROOT, descriptors, halt, launch

TOKEN = "soak-admin-token-0123456789abcdef"
CLIENTS = 16
# The most threads the server may run in the --ci run: async workers, the blocking pool's
# compile threads, the inference thread and its OpenMP team, the allocator's, the watchers'.
THREAD_BOUND = 64


def status_of(pid):
    rss, threads = 0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def memory_images(pid):
    """Descriptors of guest memory images: each loaded guest version (live, canary or kept
    for rollback) holds one."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:wasm-memory-image")
        except OSError:
            pass
    return count


def versions_held(server):
    """Guest versions the server holds: each guest's live one, its canary and its history."""
    _, listing = server.admin("GET", "/admin/guests")
    return sum(1 + len(g["history"]) + ("canary" in g) for g in listing["guests"])


def open_files(pid):
    """What the server's descriptors point at, counted by kind."""
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":[" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Certs:
    """A CA, and server certificates it signs, rotated into the server's --tls-dir."""

    def __init__(self, tmp, tls_dir):
        self.tmp, self.tls_dir = tmp, tls_dir
        self.ca, self.ca_key = os.path.join(tmp, "ca.crt"), os.path.join(tmp, "ca.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=soak-ca", "-keyout", self.ca_key, "-out", self.ca)
        self.issued = 0

    def rotate(self):
        """Issues a new pair and moves it into place, key first."""
        self.issued += 1
        stem = os.path.join(self.tmp, f"leaf{self.issued}")
        ext = stem + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", "/CN=localhost", "-keyout", stem + ".key", "-out", stem + ".csr")
        openssl("x509", "-req", "-in", stem + ".csr", "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                "-days", "1", "-extfile", ext, "-out", stem + ".crt")
        for name in ("tls.key", "tls.crt"):
            staged = os.path.join(self.tls_dir, "." + name)
            shutil.copy(stem + "." + name.split(".")[1], staged)
            os.replace(staged, os.path.join(self.tls_dir, name))


class Server:
    def __init__(self, binary, tmp, certs, guest):
        token = os.path.join(tmp, "admin-token")
        with open(token, "w") as f:
            f.write(TOKEN + "\n")
        self.proc, self.log, self.port = launch(
            binary, tmp, [f"--tls-dir={certs.tls_dir}", f"--guest=motion={guest}", f"--admin-token-file={token}"])
        deadline = time.time() + 120
        self.context = ssl.create_default_context(cafile=certs.ca)
        while self.request("GET", "/health")[0] != 200:
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit(f"the server did not become healthy; see {self.log.name}")
            time.sleep(0.2)

    def connection(self, timeout=60):
        return http.client.HTTPSConnection("localhost", self.port, timeout=timeout, context=self.context)

    def request(self, method, path, body=None, headers=None):
        """One request on a fresh connection: (status, headers, body); status 0 if it failed."""
        try:
            c = self.connection()
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, dict(r.getheaders()), data
        except (OSError, http.client.HTTPException):
            return 0, {}, b""

    def admin(self, method, path, body=None):
        status, _, data = self.request(method, path, body, {"Authorization": f"Bearer {TOKEN}"})
        return status, (json.loads(data) if data else None)

    def metric(self, name):
        _, _, data = self.request("GET", "/metrics")
        for line in data.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def stop(self):
        halt(self.proc, self.log)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.problems = []

    def add(self, outcome, problem=None):
        with self.lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if problem and len(self.problems) < 20:
                self.problems.append(problem)


def v2_body(clip):
    encoded = base64.b64encode(clip).decode()
    media = {"name": "media", "shape": [1], "datatype": "BYTES", "parameters": {"encoding": "base64"}, "data": [encoded]}
    return json.dumps({"inputs": [media]})


def client(server, clip, expected, stop, tally, seed):
    """Sends requests one after another on a kept-alive connection until `stop`."""
    rng = random.Random(seed)
    conn = server.connection()
    invalid = [
        # (path, content type, body, status, code)
        ("/v1/classify", "image/png", b"\x89PNG\r\n\x1a\n not a png", 422, "unprocessable_media"),
        ("/v1/classify", "application/x-unknown", clip, 415, "unsupported_media_type"),
        ("/v1/classify?top_k=99", "image/gif", clip, 400, "bad_request"),
        ("/v1/guests/nobody/classify", "image/gif", clip, 404, "not_found"),
    ]
    while not stop.is_set():
        roll = rng.random()
        if roll < 0.12:
            abandon(server, clip, rng)
            tally.add("cancelled")
            continue
        if roll < 0.30:
            path, content_type, body, want, code = rng.choice(invalid)
            headers, check = {"Content-Type": content_type}, ("invalid", want, code)
        elif roll < 0.45:
            path, body, headers, check = "/v2/models/motion-classifier/infer", v2_body(clip), {}, ("v2", 200, None)
        else:
            path, body, headers, check = "/v1/classify", clip, {"Content-Type": "image/gif"}, ("v1", 200, None)
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            tally.add("lost", f"{path}: {e!r}")
            conn.close()
            conn = server.connection()
            continue
        kind, want, code = check
        if r.status != want:
            tally.add("wrong", f"{path}: {r.status} {data[:200]!r}")
            continue
        if kind == "invalid":
            got = json.loads(data)["error"]["code"]
            tally.add("invalid" if got == code else "wrong", None if got == code else f"{path}: code {got}")
            continue
        digest = r.getheader("X-Guest-Digest")
        label = json.loads(data)["label"] if kind == "v1" else json.loads(data)["outputs"][0]["data"][0]
        if digest not in expected or expected[digest] != label:
            tally.add("wrong", f"{path}: '{label}' from {digest}")
        else:
            tally.add("ok")
    conn.close()


def abandon(server, clip, rng):
    """Sends a whole request on a new connection and hangs up before the answer."""
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        tls = server.context.wrap_socket(raw, server_hostname="localhost")
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/gif\r\n"
                f"Content-Length: {len(clip)}\r\n\r\n").encode()
        tls.sendall(head + clip)
        time.sleep(rng.uniform(0, 0.15))
        tls.close()
    except OSError:
        pass


def operator(server, versions, stop, events, canary_every, canary_for, swap_every):
    """Swaps the default guest every `swap_every` s; every `canary_every` s runs the other
    version as a 25 % canary for `canary_for` s, then promotes or rolls it back in turn."""
    started = time.time()
    live, swaps, canaries = 0, 0, 0
    canary_started = None
    while not stop.wait(1):
        now = time.time() - started
        if canary_started is not None:
            if now - canary_started >= canary_for:
                action = "promote" if canaries % 2 else "rollback"
                status, _ = server.admin("POST", f"/admin/guests/motion/{action}")
                events.append((round(now), action, status))
                if action == "promote" and status == 200:
                    live = 1 - live
                canary_started = None
            continue
        if now >= (canaries + 1) * canary_every:
            canaries += 1
            status, _ = server.admin("PUT", "/admin/guests/motion?canary=25", versions[1 - live])
            events.append((round(now), "canary", status))
            canary_started = now if status == 200 else None
        elif now >= (swaps + 1) * swap_every:
            swaps += 1
            status, _ = server.admin("PUT", "/admin/guests/motion", versions[1 - live])
            events.append((round(now), "swap", status))
            if status == 200:
                live = 1 - live


def rotator(certs, stop, events, every, started):
    while not stop.wait(every):
        certs.rotate()
        events.append((round(time.time() - started), "certificate", 0))


def reference_labels(server, versions, clip):
    """The label each version gives the clip, from a probe guest of the same bytes."""
    expected = {}
    for wasm in versions:
        status, entry = server.admin("PUT", "/admin/guests/probe", wasm)
        assert status in (200, 201), f"installing the probe: {status} {entry}"
        status, _, data = server.request("POST", "/v1/guests/probe/classify", clip, {"Content-Type": "image/gif"})
        assert status == 200, data
        expected[entry["digest"]] = json.loads(data)["label"]
    server.admin("DELETE", "/admin/guests/probe")
    return expected


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/motion-host"))
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
    parser.add_argument("--ci", action="store_true", help="the short run's checks and schedule")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench/results/soak.json"))
    args = parser.parse_args()
    if shutil.which("openssl") is None:
        sys.exit("the soak issues certificates with the openssl command, which is not installed")

    # The short run packs the same events into its two minutes.
    sample_every, rotate_every = (10, 30) if args.ci else (60, 60)
    canary_every, canary_for = (45, 15) if args.ci else (240, 60)
    clip = open(os.path.join(ROOT, "examples/clip.gif"), "rb").read()
    versions = [open(os.path.join(ROOT, "target/test-guests", f"{n}.wasm"), "rb").read()
                for n in ("motion", "motion-reversed")]
    tmp = tempfile.mkdtemp(prefix="motion-soak-")
    tls_dir = os.path.join(tmp, "tls")
    os.mkdir(tls_dir)
    certs = Certs(tmp, tls_dir)
    certs.rotate()
    server = Server(args.bin, tmp, certs, os.path.join(ROOT, "target/test-guests/motion.wasm"))
    pid = server.proc.pid
    failed = []
    try:
        expected = reference_labels(server, versions, clip)
        print(f"labels by version: {expected}")
        fds_start, images_start = descriptors(pid), memory_images(pid)
        samples = []
        tally, stop, events = Tally(), threading.Event(), []
        started = time.time()

        def sample():
            # Resident memory under load moves with the requests of the last second: each
            # sample is the median of 11 readings over 5 s.
            readings = []
            for i in range(11):
                readings.append(status_of(pid))
                if i < 10:
                    time.sleep(0.5)
            rss = sorted(r[0] for r in readings)[5]
            threads = readings[-1][1]
            with tally.lock:
                done = dict(tally.counts)
            samples.append({"t_s": round(time.time() - started), "rss_kib": rss, "fds": descriptors(pid),
                            "threads": threads, "outcomes": done})

        sample()
        workers = [threading.Thread(target=client, args=(server, clip, expected, stop, tally, i)) for i in range(CLIENTS)]
        workers.append(threading.Thread(target=operator, args=(server, versions, stop, events, canary_every,
                                                               canary_for, 20)))
        workers.append(threading.Thread(target=rotator, args=(certs, stop, events, rotate_every, started)))
        for w in workers:
            w.start()
        due = started
        while due < started + args.duration:
            due = min(due + sample_every, started + args.duration)
            time.sleep(max(0.0, due - time.time()))
            sample()
            s = samples[-1]
            print(f"{s['t_s']:5d} s  rss {s['rss_kib'] / 1024:7.1f} MiB  fds {s['fds']:4d}  threads {s['threads']:3d}  "
                  f"{s['outcomes']}", flush=True)
        stop.set()
        for w in workers:
            w.join()
        # The load is over: what is left open is what the server kept.
        time.sleep(3)
        end_rss, end_threads = status_of(pid)
        end = {"rss_kib": end_rss, "fds": descriptors(pid), "threads": end_threads,
               "memory_images": memory_images(pid), "versions_held": versions_held(server),
               "in_flight": server.metric("motion_host_http_requests_in_flight"),
               "stores_open": server.metric("motion_host_guest_stores_open")}
        counts = tally.counts
        print(f"\noutcomes: {counts}\nevents: {len(events)} ({', '.join(sorted({e[1] for e in events}))})")
        print(f"descriptors: {fds_start} at the start, {end['fds']} at the end ({images_start} and "
              f"{end['memory_images']} of them guest memory images, {end['versions_held']} versions held at the end); "
              f"threads at most "
              f"{max(s['threads'] for s in samples)}; guest stores open at the end: {end['stores_open']}")

        if counts.get("lost", 0) or counts.get("wrong", 0):
            failed.append(f"{counts.get('lost', 0)} lost and {counts.get('wrong', 0)} wrong: {tally.problems}")
        bad_events = [e for e in events if e[1] != "certificate" and e[2] != 200]
        if bad_events:
            failed.append(f"admin actions that failed: {bad_events}")
        if end["in_flight"] != 1 or end["stores_open"] != 0:
            failed.append(f"work left behind: {end}")
        if end["memory_images"] != end["versions_held"]:
            failed.append(f"{end['memory_images']} guest memory images for {end['versions_held']} versions held")
        if args.ci:
            # Versions kept for rollback hold their memory images: the rest must come back.
            others_start, others_end = fds_start - images_start, end["fds"] - end["memory_images"]
            if abs(others_end - others_start) > 5:
                failed.append(f"descriptors besides memory images went from {others_start} to {others_end}: "
                              f"{open_files(pid)}")
            if max(s["threads"] for s in samples) > THREAD_BOUND:
                failed.append(f"more than {THREAD_BOUND} threads: {[s['threads'] for s in samples]}")
        else:
            last = [s for s in samples if s["t_s"] >= args.duration - 600]
            mean = sum(s["rss_kib"] for s in last) / len(last)
            spread = [round(100 * (s["rss_kib"] - mean) / mean, 2) for s in last]
            print(f"resident memory over the last 10 minutes, % from its mean: {spread}")
            if any(abs(x) > 2 for x in spread):
                failed.append(f"resident memory over the last 10 minutes strays more than 2 %: {spread}")
            minute10 = min(samples, key=lambda s: abs(s["t_s"] - 600))
            under_load = samples[-1]
            if abs(under_load["fds"] - minute10["fds"]) > 5 or under_load["threads"] != minute10["threads"]:
                failed.append(f"descriptors/threads at minute 10 {minute10['fds']}/{minute10['threads']}, "
                              f"at the end {under_load['fds']}/{under_load['threads']}")

        result = {"duration_s": args.duration, "clients": CLIENTS, "ci": args.ci, "outcomes": counts,
                  "events": events, "samples": samples, "end": end, "fds_start": fds_start,
                  "problems": tally.problems, "failed": failed}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        plot(result, os.path.splitext(args.out)[0] + ".png")
    finally:
        server.stop()
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed))
        print(f"server log: {server.log.name}")
        sys.exit(1)
    shutil.rmtree(tmp, ignore_errors=True)
    print("passed")


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    samples = result["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, key, label in zip(axes, ("rss_kib", "fds", "threads"), ("RSS (MiB)", "open descriptors", "threads")):
        values = [s[key] / 1024 if key == "rss_kib" else s[key] for s in samples]
        ax.plot(minutes, values, marker="o")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    counts = result["outcomes"]
    fig.suptitle(f"motion-host soak: {CLIENTS} clients; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
