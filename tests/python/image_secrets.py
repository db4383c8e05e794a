"""Checks that no certificate of a CA bundle reached an image: not in any file of any layer
(as PEM or DER), not in the image's history or configuration.

    image_secrets.py IMAGE BUNDLE

The bundle is the one the image was built with (the build secret `ca_bundle`). Every
certificate in it is looked for in PEM form; the ones a stock trust store lacks (a proxy's own
CA: the bundle's certificates that certifi does not carry) also in DER form. Before the image,
the scan is run on a layer made here that holds the bundle, and must find it there.
"""

import base64
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

from checks import check, fail

PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def certificates(pem_bytes):
    found = set()
    for match in PEM.finditer(pem_bytes):
        try:
            found.add(base64.b64decode(re.sub(rb"\s+", b"", match.group(1)), validate=True))
        except ValueError:
            pass
    return found


def stock_certificates():
    try:
        import certifi
    except ImportError:
        return set()
    with open(certifi.where(), "rb") as f:
        return certificates(f.read())


def scan_layer(layer, pem_set, der_needles):
    """The files of one layer (a tar stream) that hold a certificate of the bundle."""
    hits = []
    with tarfile.open(fileobj=layer, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if certificates(data) & pem_set:
                hits.append(f"{member.name} (PEM)")
            elif any(needle in data for needle in der_needles):
                hits.append(f"{member.name} (DER)")
    return hits


def control(bundle_bytes, pem_set, der_needles):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name, data in [("etc/ssl/certs/proxy.pem", bundle_bytes)] + [
            ("etc/ssl/certs/proxy.der", der) for der in sorted(der_needles)[:1]
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    layer.seek(0)
    hits = scan_layer(layer, pem_set, der_needles)
    check(any("proxy.pem" in h for h in hits), f"the scan misses a bundle stored in a layer: {hits}")
    if der_needles:
        check(any("proxy.der" in h for h in hits), f"the scan misses a DER certificate: {hits}")


def main():
    if len(sys.argv) != 3:
        fail("usage: image_secrets.py IMAGE BUNDLE")
    image, bundle = sys.argv[1:]
    with open(bundle, "rb") as f:
        bundle_bytes = f.read()
    pem_set = certificates(bundle_bytes)
    check(pem_set, f"{bundle} holds no PEM certificate")
    stock = stock_certificates()
    der_needles = pem_set - stock if stock else pem_set
    control(bundle_bytes, pem_set, der_needles)

    history = subprocess.run(
        ["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
        capture_output=True, text=True, check=True).stdout
    config = subprocess.run(["podman", "image", "inspect", image],
                            capture_output=True, text=True, check=True).stdout
    bodies = [base64.b64encode(der)[:64].decode() for der in pem_set]
    for where, text in (("history", history), ("configuration", config)):
        for needle in [bundle, "BEGIN CERTIFICATE"] + bodies:
            check(needle not in text, f"the image's {where} mentions {needle[:40]!r}")

    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "image.tar")
        subprocess.run(["podman", "save", "--format", "docker-archive", "-o", archive, image],
                       check=True, capture_output=True)
        with tarfile.open(archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))
            layers = manifest[0]["Layers"]
            check(layers, f"{image} has no layers")
            hits = []
            for name in layers:
                hits += [f"{name}: {h}" for h in scan_layer(outer.extractfile(name), pem_set, der_needles)]
    check(not hits, f"certificates of {bundle} are in {image}: {hits}")
    print(f"{len(layers)} layers, {len(pem_set)} certificates ({len(der_needles)} also as DER): none in the image")


if __name__ == "__main__":
    main()
