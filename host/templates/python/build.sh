#!/usr/bin/env bash
# Builds {{name}}.wasm: app.py as a component (componentize-py), then the toolkit composed in
# (wasm-tools compose), so the file holds everything the guest imports but the host's own.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
componentize-py -d wit -w guest componentize app -o build/guest.wasm
wasm-tools compose build/guest.wasm -d toolkit.wasm -o {{name}}.wasm 2>&1 | grep -v -e deprecated -e 'Please use' -e '^$' || true
test -s {{name}}.wasm
echo "built {{name}}.wasm"
