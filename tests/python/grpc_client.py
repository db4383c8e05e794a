"""Drives motion-host over gRPC with Triton's own client (tritonclient.grpc), and with the
generated stubs it ships for what that client cannot send (typed `contents`, the health service).

Usage: METRICS_URL=URL grpc_client.py HOST:PORT CA_CERT|- INPUT_F32 CLIP... -- FRAME...

CA_CERT is the server's certificate (TLS), or `-` for plain HTTP/2. METRICS_URL is the server's
/metrics, which a gRPC-only listener does not serve. INPUT_F32 holds the raw
model input for the CLIPs (float32, [len(CLIP), 8, 112, 112]); the FRAMEs are one clip as
separate PNG frames. Checks what can be checked here and prints a JSON report on stdout for the
Rust test (tests/oip.rs) to compare with the server's /v1 and /v2 answers.
"""

import json
import os
import queue
import ssl
import sys
import time
import urllib.request

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from checks import check, fail


def expect_error(call, code, words):
    try:
        call()
    except InferenceServerException as e:
        check(e.status() == f"StatusCode.{code}", f"expected {code}, got {e.status()}: {e.message()}")
        for word in words:
            check(word in e.message(), f"error message lacks '{word}': {e.message()}")
        return e.message()
    fail(f"expected an error with status {code}, the call succeeded")


def channel(url, ca):
    if ca is None:
        return grpc.insecure_channel(url)
    return grpc.secure_channel(url, grpc.ssl_channel_credentials(open(ca, "rb").read()))


def health(url, ca, service):
    """grpc.health.v1.Health/Check with hand-encoded messages (field 1: the service name)."""
    name = service.encode()
    request = (b"\x0a" + bytes([len(name)]) + name) if name else b""
    check_rpc = channel(url, ca).unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        answer = check_rpc(request, timeout=10)
    except grpc.RpcError as e:
        return e.code().name
    statuses = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING"}
    return statuses[answer[1]] if answer[:1] == b"\x08" else "UNKNOWN"


def stopped_calls(metrics, ca):
    """The server's count of requests stopped at their deadline or cancelled, from /metrics."""
    context = None if ca is None else ssl.create_default_context(cafile=ca)
    answer = urllib.request.urlopen(metrics, timeout=10, context=context)
    prefixes = ("motion_host_requests_deadline_exceeded_total{", "motion_host_requests_cancelled_total{")
    return sum(float(line.split()[-1]) for line in answer.read().decode().splitlines() if line.startswith(prefixes))


def deadline_passes_on_the_server(client, metrics, ca, clip):
    """A pipeline call whose deadline passes while the server works on it.

    A deadline short enough to pass during the call can also pass before the call has left the
    client (a busy machine, a slow thread), and then the server never sees it: each try doubles
    the deadline until the server has stopped or seen cancelled a call, by its own count.
    """
    media = tc.InferInput("media", [1], "BYTES")
    media.set_data_from_numpy(np.array([open(clip, "rb").read()], dtype=np.object_))
    before = stopped_calls(metrics, ca)
    timeout = 0.005
    for _ in range(6):
        try:
            client.infer("motion-classifier", [media], client_timeout=timeout)
        except InferenceServerException as e:
            check(e.status() == "StatusCode.DEADLINE_EXCEEDED", f"expected DEADLINE_EXCEEDED, got {e.status()}")
            # The server counts a cancelled call when it sees the client's reset, a moment later.
            for _ in range(10):
                if stopped_calls(metrics, ca) > before:
                    return e.message()
                time.sleep(0.05)
        timeout *= 2
    fail("no call with a deadline of 5 to 160 ms was stopped or seen cancelled by the server")


def main():
    args = sys.argv[1:]
    split = args.index("--")
    url, ca, input_path, clips, frames = args[0], args[1], args[2], args[3:split], args[split + 1 :]
    metrics = os.environ["METRICS_URL"]
    ca = None if ca == "-" else ca
    if ca is None:
        client = tc.InferenceServerClient(url=url)
    else:
        client = tc.InferenceServerClient(url=url, ssl=True, root_certificates=ca)
    report = {}

    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    for model in ("motion-resnet18", "motion-classifier"):
        check(client.is_model_ready(model), f"{model} not ready")
        check(client.is_model_ready(model, model_version="1" if model == "motion-resnet18" else ""), "integer version")
    check(not client.is_model_ready("no-such-model"), "an unknown model reported ready")
    report["health"] = {s: health(url, ca, s) for s in ("", "inference.GRPCInferenceService", "no.such.Service")}
    report["server_metadata"] = client.get_server_metadata(as_json=True)
    report["model_metadata"] = {m: client.get_model_metadata(m, as_json=True) for m in ("motion-resnet18", "motion-classifier")}
    report["model_config"] = {m: client.get_model_config(m, as_json=True)["config"] for m in ("motion-resnet18", "motion-classifier")}
    report["repository_index"] = client.get_model_repository_index(as_json=True)
    version = report["model_metadata"]["motion-resnet18"]["versions"][0]

    # The raw network: raw_input_contents (as tritonclient sends), then typed contents.
    x = np.fromfile(input_path, dtype="<f4").reshape(len(clips), 8, 112, 112)
    raw = {}
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("motion-resnet18", [tensor], request_id="raw-1", model_version=version)
    logits = result.as_numpy("logits")
    check(logits.dtype == np.float32 and logits.shape == (len(clips), 16), f"logits {logits.shape}")
    check(result.get_response().id == "raw-1", "request id not echoed")
    check(result.get_response().model_version == version, "model version not reported")
    raw["raw_contents"] = logits.tolist()

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel(url, ca))
    typed = service_pb2.ModelInferRequest(model_name="motion-resnet18", model_version="1", id="typed")
    t = typed.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    answer = stub.ModelInfer(typed, timeout=60)
    check(answer.id == "typed" and answer.outputs[0].name == "logits", f"typed answer {answer.id}")
    raw["typed_contents"] = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(len(clips), 16).tolist()
    report["raw"] = raw

    # The guest pipeline: one encoded clip per request, then frames as elements.
    pipeline = {"clips": []}
    for path in clips:
        media = tc.InferInput("media", [1], "BYTES")
        media.set_data_from_numpy(np.array([open(path, "rb").read()], dtype=np.object_))
        result = client.infer("motion-classifier", [media], headers={"x-request-id": "grpc-pipeline"})
        label = result.as_numpy("label").reshape(-1)[0]
        check(isinstance(label, bytes), f"label is {type(label)}")
        scores = result.as_numpy("scores")
        check(scores.shape == (1, 16) and scores.dtype == np.float32, f"scores {scores.shape}")
        pipeline["clips"].append({"label": label.decode(), "scores": scores[0].tolist()})
    elements = np.array([open(f, "rb").read() for f in frames], dtype=np.object_)
    media = tc.InferInput("media", [len(frames)], "BYTES")
    media.set_data_from_numpy(elements)
    result = client.infer("motion-classifier", [media], outputs=[tc.InferRequestedOutput("label")])
    check(result.as_numpy("scores") is None, "an output that was not asked for came back")
    pipeline["frames"] = result.as_numpy("label").reshape(-1)[0].decode()
    report["pipeline"] = pipeline

    # The bidirectional stream: every answer carries its request's id; an error its message.
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    gif = open(clips[0], "rb").read()
    for i in range(4):
        media = tc.InferInput("media", [1], "BYTES")
        media.set_data_from_numpy(np.array([gif], dtype=np.object_))
        client.async_stream_infer("motion-classifier", [media], request_id=f"stream-{i}")
    client.async_stream_infer("no-such-model", [media], request_id="stream-bad")
    stream = {"ok": {}, "errors": []}
    for _ in range(5):
        result, error = answers.get(timeout=120)
        if error is not None:
            stream["errors"].append(error.message())
        else:
            stream["ok"][result.get_response().id] = result.as_numpy("label").reshape(-1)[0].decode()
    client.stop_stream()
    report["stream"] = stream

    # Errors, with the status codes Triton uses.
    errors = {}
    errors["unknown_model"] = expect_error(lambda: client.get_model_metadata("no-such-model"), "NOT_FOUND", ["no-such-model"])
    errors["unknown_version"] = expect_error(
        lambda: client.get_model_metadata("motion-resnet18", model_version="9"), "NOT_FOUND", ["'9'"]
    )
    wrong = tc.InferInput("input", [1, 8, 112, 111], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 8, 112, 111), dtype=np.float32))
    errors["wrong_shape"] = expect_error(lambda: client.infer("motion-resnet18", [wrong]), "INVALID_ARGUMENT", ["shape"])
    garbage = tc.InferInput("media", [1], "BYTES")
    garbage.set_data_from_numpy(np.array([b"GIF89a\x00\x00broken"], dtype=np.object_))
    errors["broken_gif"] = expect_error(lambda: client.infer("motion-classifier", [garbage]), "INVALID_ARGUMENT", [])
    unknown = tc.InferInput("media", [1], "BYTES")
    unknown.set_data_from_numpy(np.array([b"RIFF....WEBPVP8 "], dtype=np.object_))
    errors["unknown_media"] = expect_error(
        lambda: client.infer("motion-classifier", [unknown]), "INVALID_ARGUMENT", ["content_type"]
    )
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    errors["unknown_output"] = expect_error(
        lambda: client.infer("motion-resnet18", [tensor], outputs=[tc.InferRequestedOutput("logitz")]),
        "INVALID_ARGUMENT",
        ["logitz"],
    )
    errors["deadline"] = deadline_passes_on_the_server(client, metrics, ca, clips[0])
    errors["unimplemented"] = expect_error(
        lambda: client.get_system_shared_memory_status(), "UNIMPLEMENTED", []
    )
    unknown = channel(url, ca).unary_unary("/no.such.Service/Method", request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)
    try:
        unknown(b"", timeout=10)
        fail("a call to an unknown service succeeded")
    except grpc.RpcError as e:
        errors["unknown_service"] = e.code().name
    report["errors"] = errors
    report["statistics"] = client.get_inference_statistics("motion-classifier", as_json=True)

    client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
