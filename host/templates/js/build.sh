#!/usr/bin/env bash
# Builds {{name}}.wasm: guest.js as a component (jco componentize, with every optional WASI
# feature off so it imports nothing the host does not give), then the toolkit composed around it
# (wasm-tools compose).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
[ -d node_modules ] || npm install --no-audit --no-fund
npx jco componentize guest.js -w wit -n guest -d all -o build/guest.wasm
rm -f {{name}}.wasm
# wasm-tools says the command is deprecated in favour of wac; its output is shown only on failure.
if ! wasm-tools compose toolkit.wasm -d build/guest.wasm -o {{name}}.wasm > build/compose.log 2>&1; then
    cat build/compose.log >&2
    exit 1
fi
echo "built {{name}}.wasm"
