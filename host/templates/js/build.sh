#!/usr/bin/env bash
# Builds {{name}}.wasm: guest.js as a component (jco componentize, with every optional WASI
# feature off so it imports nothing the host does not give), then the toolkit composed in
# (wasm-tools compose).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
[ -d node_modules ] || npm install --no-audit --no-fund
npx jco componentize guest.js -w wit -n guest -d all -o build/guest.wasm
wasm-tools compose build/guest.wasm -d toolkit.wasm -o {{name}}.wasm 2>&1 | grep -v -e deprecated -e 'Please use' -e '^$' || true
test -s {{name}}.wasm
echo "built {{name}}.wasm"
