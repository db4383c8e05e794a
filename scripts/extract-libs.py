"""Copies the shared libraries out of wheels: every `.so` under `torch/lib/` and every `.so`
under a `nvidia/*/lib/` directory, flat into one directory (the libraries find each other
there through their `$ORIGIN` run paths and the loader cache).

Usage: python3 scripts/extract-libs.py WHEEL_DIR OUT_DIR   (used by the Dockerfile's CUDA stage)
"""

import glob
import os
import shutil
import sys
import zipfile


# Python bindings and helpers the server does not load.
SKIPPED = {"libtorch_python.so", "libshm.so", "libtorch_global_deps.so"}


def main():
    wheels, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    copied = 0
    for wheel in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                in_lib = name.startswith("torch/lib/") or (name.startswith("nvidia/") and "/lib/" in name)
                if in_lib and ".so" in base and base not in SKIPPED:
                    with z.open(name) as src, open(os.path.join(out, base), "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    copied += 1
    if not os.path.exists(os.path.join(out, "libtorch_cuda.so")):
        sys.exit(f"no libtorch_cuda.so among the {copied} libraries of {wheels}")
    print(f"{copied} libraries copied to {out}")


if __name__ == "__main__":
    main()
