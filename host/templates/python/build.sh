#!/usr/bin/env bash
# Builds {{name}}.wasm: app.py as a component (componentize-py), then the toolkit composed around
# it (wasm-tools compose), so the file holds everything but what the host gives.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
componentize-py -d wit -w guest componentize app -o build/guest.wasm
rm -f {{name}}.wasm
# wasm-tools says the command is deprecated in favour of wac; its output is shown only on failure.
if ! wasm-tools compose toolkit.wasm -d build/guest.wasm -o {{name}}.wasm > build/compose.log 2>&1; then
    cat build/compose.log >&2
    exit 1
fi
echo "built {{name}}.wasm"
