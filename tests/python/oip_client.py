"""Drives motion-host with Triton's own HTTP client (tritonclient.http), over TLS.

Usage: oip_client.py HOST:PORT CA_CERT INPUT_F32 CLIP... -- FRAME...

INPUT_F32 holds the raw model input for the CLIPs (float32, [len(CLIP), 8, 112, 112]). The
FRAMEs are one clip as separate PNG frames. Checks what can be checked here and prints a JSON
report on stdout for the Rust test (tests/oip.rs) to compare with the server's /v1 answers.
"""

import base64
import json
import sys

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from checks import check, fail


def expect_error(call, status, words):
    try:
        call()
    except InferenceServerException as e:
        check(e.status() == str(status), f"expected status {status}, got {e.status()}: {e.message()}")
        for word in words:
            check(word in e.message(), f"error message lacks '{word}': {e.message()}")
        return e.message()
    fail(f"expected an error with status {status}, the call succeeded")


def main():
    args = sys.argv[1:]
    split = args.index("--")
    url, ca, input_path, clips, frames = args[0], args[1], args[2], args[3:split], args[split + 1 :]
    client = http.InferenceServerClient(url=url, ssl=True, ssl_options={"ca_certs": ca})
    report = {}

    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    for model in ("motion-resnet18", "motion-classifier"):
        check(client.is_model_ready(model), f"{model} not ready")
    check(not client.is_model_ready("no-such-model"), "an unknown model reported ready")
    report["server_metadata"] = client.get_server_metadata()
    report["model_metadata"] = {
        m: client.get_model_metadata(m) for m in ("motion-resnet18", "motion-classifier")
    }
    version = report["model_metadata"]["motion-resnet18"]["versions"][0]
    check(client.is_model_ready("motion-resnet18", model_version=version), "versioned ready failed")

    # The raw network, JSON tensors then the binary extension.
    x = np.fromfile(input_path, dtype="<f4").reshape(len(clips), 8, 112, 112)
    raw = {}
    for binary in (False, True):
        tensor = http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = http.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("motion-resnet18", [tensor], outputs=[wanted], request_id=f"raw-{binary}")
        logits = result.as_numpy("logits")
        check(logits.dtype == np.float32 and logits.shape == (len(clips), 16), f"logits {logits.shape}")
        check(result.get_response()["id"] == f"raw-{binary}", "request id not echoed")
        check(result.get_response()["model_version"] == version, "model version not reported")
        raw["binary" if binary else "json"] = logits.tolist()
    # At a version, and with no outputs named (all come back, in binary, as the client asks).
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("motion-resnet18", [tensor], model_version=version)
    raw["versioned"] = result.as_numpy("logits").tolist()
    report["raw"] = raw

    # The guest pipeline: one encoded clip per request.
    pipeline = {"binary": [], "json": []}
    for path in clips:
        data = open(path, "rb").read()
        media = http.InferInput("media", [1], "BYTES")
        media.set_data_from_numpy(np.array([data], dtype=np.object_))
        result = client.infer("motion-classifier", [media])
        label = result.as_numpy("label").reshape(-1)[0]
        check(isinstance(label, bytes), f"binary label is {type(label)}")
        scores = result.as_numpy("scores")
        check(scores.shape == (1, 16) and scores.dtype == np.float32, f"scores {scores.shape}")
        pipeline["binary"].append({"label": label.decode(), "scores": scores[0].tolist()})

        # In JSON a BYTES element is the string's own bytes, which a GIF's are not UTF-8 text
        # (tritonclient refuses to send them), so the clip goes as base64 and the input says so.
        # tritonclient has no setter for an input's parameters.
        media = http.InferInput("media", [1], "BYTES")
        media.set_data_from_numpy(np.array([base64.b64encode(data)], dtype=np.object_), binary_data=False)
        media._parameters["encoding"] = "base64"

        outputs = [http.InferRequestedOutput(n, binary_data=False) for n in ("label", "scores")]
        result = client.infer("motion-classifier", [media], outputs=outputs)
        label = result.as_numpy("label").reshape(-1)[0]
        pipeline["json"].append({"label": str(label), "scores": result.as_numpy("scores")[0].tolist()})
    # Frames as the elements of one tensor, in time order.
    elements = np.array([open(f, "rb").read() for f in frames], dtype=np.object_)
    media = http.InferInput("media", [len(frames)], "BYTES")
    media.set_data_from_numpy(elements)
    result = client.infer("motion-classifier", [media], outputs=[http.InferRequestedOutput("label")])
    check(result.as_numpy("scores") is None, "an output that was not asked for came back")
    pipeline["frames"] = result.as_numpy("label").reshape(-1)[0].decode()
    report["pipeline"] = pipeline

    # Errors, in the protocol's shape, with the status Triton's clients expect.
    errors = {}
    errors["unknown_model"] = expect_error(lambda: client.get_model_metadata("no-such-model"), 404, ["no-such-model"])
    errors["unknown_version"] = expect_error(
        lambda: client.get_model_metadata("motion-resnet18", model_version="9.9.9"), 404, ["9.9.9"]
    )
    wrong = http.InferInput("input", [1, 8, 112, 111], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 8, 112, 111), dtype=np.float32))
    errors["wrong_shape"] = expect_error(lambda: client.infer("motion-resnet18", [wrong]), 400, ["shape"])
    not_base64 = http.InferInput("media", [1], "BYTES")
    not_base64.set_data_from_numpy(np.array([b"GIF89a not base64!"], dtype=np.object_), binary_data=False)
    not_base64._parameters["encoding"] = "base64"
    errors["not_base64"] = expect_error(lambda: client.infer("motion-classifier", [not_base64]), 400, ["base64"])
    garbage = http.InferInput("media", [1], "BYTES")
    garbage.set_data_from_numpy(np.array([b"GIF89a\x00\x00broken"], dtype=np.object_))
    errors["broken_gif"] = expect_error(lambda: client.infer("motion-classifier", [garbage]), 400, [])
    unknown = http.InferInput("media", [1], "BYTES")
    unknown.set_data_from_numpy(np.array([b"RIFF....WEBPVP8 "], dtype=np.object_))
    errors["unknown_media"] = expect_error(lambda: client.infer("motion-classifier", [unknown]), 400, ["content_type"])
    named = http.InferRequestedOutput("logitz")
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    errors["unknown_output"] = expect_error(
        lambda: client.infer("motion-resnet18", [tensor], outputs=[named]), 400, ["logitz"]
    )
    report["errors"] = errors

    client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
