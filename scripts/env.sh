# shellcheck shell=bash
# Sourced by scripts/serve and scripts/test: installs what building motion-host needs and
# exports the variables the build reads. Downloads are cached outside the repository
# (MOTION_HOST_CACHE, default ~/.cache/motion-host), so a second run fetches nothing.
#
# libtorch comes from the torch wheel on PyPI (the only place it can be fetched from here).
# Only the CPU libraries and headers are unpacked, plus the two small CUDA libraries that
# PyPI's libtorch_cpu.so links; leaving libtorch_cuda.so out makes torch-sys link a CPU-only
# build. The torch version is pinned to the one tch 0.24 wraps (2.11), which is also the
# torch the GPU machines carry.
#
# Every step is announced with `step PHASE MESSAGE` (phases: download, image, build, test); a
# failing command is reported with the step it failed in. MOTION_HOST_PHASE_LOG, when set, names
# a file each step is appended to (its start time, phase and message), which scripts/cold-check
# turns into per-phase times. MOTION_HOST_OFFLINE=1 (set inside the image build the scripts
# prepare) forbids every download: a missing piece fails with the step that would have needed
# the network. Each download lands in a temporary path and is moved into place only when
# complete, so a run killed half-way leaves nothing a later run would trust.

set -eEuo pipefail

TORCH_VERSION=2.11.0
CUDA_RUNTIME_VERSION=13.0.96 # pinned by torch 2.11's metadata (cuda-toolkit 13.0.2)
CUDA_CUPTI_VERSION=13.0.85

MOTION_HOST_CACHE="${MOTION_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/motion-host}"
LIBTORCH_DIR="$MOTION_HOST_CACHE/libtorch-$TORCH_VERSION"

say() { printf '[setup] %s\n' "$*" >&2; }

MOTION_HOST_STEP="setting up"
step() {
    MOTION_HOST_STEP="$2"
    say "$2"
    if [ -n "${MOTION_HOST_PHASE_LOG:-}" ]; then
        printf '%s\t%s\t%s\n' "$(date +%s)" "$1" "$2" >> "$MOTION_HOST_PHASE_LOG"
    fi
}
on_error() {
    local rc=$?
    say "failed while ${MOTION_HOST_STEP}: \`$BASH_COMMAND\` exited with $rc"
}
trap on_error ERR

# Fails the current step when downloads are forbidden: `needs_network WHAT`.
needs_network() {
    if [ "${MOTION_HOST_OFFLINE:-0}" = 1 ]; then
        say "$1 needs the network, and MOTION_HOST_OFFLINE=1 forbids it (prepare it outside the build)"
        return 1
    fi
}

fetch_libtorch() {
    [ -f "$LIBTORCH_DIR/.complete" ] && return 0
    step download "fetching libtorch $TORCH_VERSION from PyPI into $MOTION_HOST_CACHE"
    needs_network "libtorch (not in $LIBTORCH_DIR)"
    local wheels="$MOTION_HOST_CACHE/wheels" partial
    mkdir -p "$wheels"
    rm -rf "$MOTION_HOST_CACHE"/wheels.partial.* "$MOTION_HOST_CACHE"/staging.*
    partial="$(mktemp -d "$MOTION_HOST_CACHE/wheels.partial.XXXXXX")"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$partial" \
        --find-links "$wheels" \
        "torch==$TORCH_VERSION" \
        "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
        "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION"
    mv -f "$partial"/*.whl "$wheels"/
    rmdir "$partial"
    local staging
    staging="$(mktemp -d "$MOTION_HOST_CACHE/staging.XXXXXX")"
    python3 - "$wheels" "$staging" "$TORCH_VERSION" "$CUDA_RUNTIME_VERSION" "$CUDA_CUPTI_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out, torch_v, rt_v, cupti_v = sys.argv[1:]
lib = os.path.join(out, "lib")
os.makedirs(lib)
def only(pattern):
    found = glob.glob(os.path.join(wheels, pattern))
    if len(found) != 1:
        sys.exit(f"expected one wheel matching {pattern}, found {found}")
    return found[0]
wanted = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1", "libshm.so"}
with zipfile.ZipFile(only(f"torch-{torch_v}-*.whl")) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("torch/lib/") and base in wanted:
            with z.open(name) as src, open(os.path.join(lib, base), "wb") as dst:
                shutil.copyfileobj(src, dst)
        elif name.startswith("torch/include/") and not name.endswith("/"):
            target = os.path.join(out, name[len("torch/"):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    licence = "torch-%s.dist-info/licenses/LICENSE" % torch_v
    if licence in z.namelist():
        with z.open(licence) as src, open(os.path.join(out, "LICENSE.libtorch"), "wb") as dst:
            shutil.copyfileobj(src, dst)
for pattern, so in ((f"nvidia_cuda_runtime-{rt_v}-*.whl", "libcudart.so.13"),
                    (f"nvidia_cuda_cupti-{cupti_v}-*.whl", "libcupti.so.13")):
    with zipfile.ZipFile(only(pattern)) as z:
        with z.open(f"nvidia/cu13/lib/{so}") as src, open(os.path.join(lib, so), "wb") as dst:
            shutil.copyfileobj(src, dst)
missing = wanted - set(os.listdir(lib))
if missing:
    sys.exit(f"torch wheel lacks {sorted(missing)}")
PY
    rm -rf "$LIBTORCH_DIR"
    mv "$staging" "$LIBTORCH_DIR"
    touch "$LIBTORCH_DIR/.complete"
    say "libtorch ready in $LIBTORCH_DIR"
}

# Asks the toolchain itself (rustup may be absent, as in the image build the scripts prepare).
add_wasm_target() {
    [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ] && return 0
    step download "adding the wasm32-wasip2 target"
    needs_network "the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
}

add_rustfmt() {
    cargo fmt --version >/dev/null 2>&1 && return 0
    step download "adding rustfmt"
    needs_network rustfmt
    rustup component add rustfmt
}

# Every crate the workspace needs, for every target, into the cargo home (with this machine's
# trust store), so the builds after it, the image's included, need no network.
fetch_crates() {
    [ -n "${CRATES_FETCHED:-}" ] && return 0
    step download "fetching the crates (cargo fetch --locked)"
    cargo fetch --locked --quiet
    CRATES_FETCHED=1
}

fetch_libtorch
add_wasm_target

export LIBTORCH="$LIBTORCH_DIR"
export LD_LIBRARY_PATH="$LIBTORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# A Python with the test suite's requirements (tests/requirements.txt) in a cached virtual
# environment, named in MOTION_HOST_TEST_PYTHON for the tests that run Python.
test_python() {
    local venv="$MOTION_HOST_CACHE/venv-test"
    local stamp="$venv/.requirements.sha256" wanted
    wanted="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        step download "installing the tests' Python requirements into $venv"
        python3 -m venv --clear "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
        echo "$wanted" > "$stamp"
    fi
    export MOTION_HOST_TEST_PYTHON="$venv/bin/python"
}

# Prints the Python of a virtual environment (under the cache) with a requirements file
# installed, making it when the file changed: the benchmark has one per requirements file
# (the Python service's, and Triton's, whose nvidia-pytriton pins numpy below the service's).
venv_for() {
    local venv="$MOTION_HOST_CACHE/$1" requirements="$2" wanted
    wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
        say "installing $requirements into $venv"
        # Its output goes to stderr: stdout is the path this prints.
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
        echo "$wanted" > "$venv/.requirements.sha256"
    fi
    printf '%s\n' "$venv/bin/python"
}

# Installs Debian packages for the tests that need them (`$1` names those tests, `$2` the tools
# missing), as root; anyone else is told the command instead.
debian_packages() {
    local who=$1 missing=$2
    shift 2
    if [ "$(id -u)" != 0 ]; then
        say "$who need $missing: apt-get install $*"
        return 1
    fi
    step download "installing $* (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    # Finishes an install an earlier run was killed in the middle of.
    dpkg --configure -a
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

# ffmpeg with libx264 (Debian's package), which the video tests make their H.264 fixtures with
# and decode them with for comparison.
media_tools() {
    command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && return 0
    debian_packages "the video tests" ffmpeg ffmpeg
}

# Triton's load generator, perf_analyzer, which speaks the Open Inference Protocol over REST and
# gRPC (the tests and the benchmark load motion-host with it). PyPI's perf-analyzer wheels need
# glibc 2.38; tritonclient 2.51.0 (the last release before that) carries a binary that runs on
# glibc 2.34 and later, with gRPC, protobuf and curl inside. It links two small libraries the
# base system lacks: libcudart.so.12 (used only for CUDA shared memory; from NVIDIA's PyPI wheel)
# and libb64.so.0d (Debian's package, unpacked without installing it). Each download is checked
# against its sha256. Exports MOTION_HOST_PERF_ANALYZER, a wrapper that finds the libraries.
PERF_ANALYZER_VERSION=2.51.0
perf_analyzer_tool() {
    local dir="$MOTION_HOST_CACHE/perf-analyzer-$PERF_ANALYZER_VERSION"
    if [ ! -x "$dir/perf_analyzer" ]; then
        step download "fetching perf_analyzer (tritonclient $PERF_ANALYZER_VERSION) into $dir"
        needs_network "perf_analyzer"
        local partial deb=libb64-0d_1.2-5+b1_amd64.deb
        local wheel="tritonclient-$PERF_ANALYZER_VERSION-py3-none-manylinux1_x86_64.whl"
        local cudart=nvidia_cuda_runtime_cu12-12.6.77-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
        rm -rf "$MOTION_HOST_CACHE"/perf-analyzer.partial.*
        mkdir -p "$MOTION_HOST_CACHE"
        partial="$(mktemp -d "$MOTION_HOST_CACHE/perf-analyzer.partial.XXXXXX")"
        mkdir -p "$partial/dl" "$partial/bin" "$partial/lib"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux1_x86_64 -d "$partial/dl" "tritonclient==$PERF_ANALYZER_VERSION"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux_2_17_x86_64 -d "$partial/dl" nvidia-cuda-runtime-cu12==12.6.77
        curl -fsSL -o "$partial/dl/$deb" "https://deb.debian.org/debian/pool/main/libb/libb64/${deb/+/%2b}"
        (cd "$partial/dl" && sha256sum --quiet -c -) <<SUMS
c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52  $wheel
ba3b56a4f896141e25e19ab287cd71e52a6a0f4b29d0d31609f60e3b4d5219b7  $cudart
b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82  $deb
SUMS
        python3 -m zipfile -e "$partial/dl/$wheel" "$partial/wheel"
        python3 -m zipfile -e "$partial/dl/$cudart" "$partial/cudart"
        dpkg-deb -x "$partial/dl/$deb" "$partial/deb"
        cp "$partial/wheel/tritonclient-$PERF_ANALYZER_VERSION.data/data/bin/perf_analyzer" "$partial/bin/"
        cp "$partial/cudart/nvidia/cuda_runtime/lib/libcudart.so.12" "$partial/deb/usr/lib/x86_64-linux-gnu/libb64.so.0d" "$partial/lib/"
        chmod 755 "$partial/bin/perf_analyzer"
        cat > "$partial/perf_analyzer" <<'WRAPPER'
#!/bin/sh
here="$(dirname "$(readlink -f "$0")")"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/perf_analyzer" "$@"
WRAPPER
        chmod 755 "$partial/perf_analyzer"
        "$partial/perf_analyzer" --version 2>&1 | grep -q "Perf Analyzer Version $PERF_ANALYZER_VERSION"
        rm -rf "$partial/dl" "$partial/wheel" "$partial/cudart" "$partial/deb" "$dir"
        mv "$partial" "$dir"
    fi
    export MOTION_HOST_PERF_ANALYZER="$dir/perf_analyzer"
}

# The toolchains of the guest templates (host/templates), at the versions the templates pin, in
# the cache: componentize-py and wasm-tools in a virtual environment (from the Python template's
# requirements), jco and componentize-js under node_modules (from the JavaScript template's
# package.json). Exports MOTION_HOST_GUEST_TOOLS, the cache directory, for the tests that build
# the templates.
guest_toolchains() {
    local tools="$MOTION_HOST_CACHE/guest-tools"
    local venv="$tools/venv" requirements=host/templates/python/requirements.txt wanted
    wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
        step download "installing the Python guest toolchain (componentize-py, wasm-tools) into $venv"
        needs_network "the Python guest toolchain"
        python3 -m venv --clear "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" > "$venv/.requirements.sha256"
    fi
    local node="$tools/node" package=host/templates/js/package.json
    wanted="$(sha256sum "$package" | cut -d' ' -f1)"
    if [ "$(cat "$node/.package.sha256" 2>/dev/null)" != "$wanted" ]; then
        step download "installing the JavaScript guest toolchain (jco, componentize-js) into $node"
        needs_network "the JavaScript guest toolchain"
        rm -rf "$node"
        mkdir -p "$node"
        sed 's/{{name}}/guest-tools/' "$package" > "$node/package.json"
        (cd "$node" && npm install --silent --no-audit --no-fund)
        echo "$wanted" > "$node/.package.sha256"
    fi
    export MOTION_HOST_GUEST_TOOLS="$tools"
}

# Builds the default guest component (the build output is where the server looks for it).
build_guest() {
    step build "building the default guest and the toolkit (wasm32-wasip2)"
    cargo build --quiet --release --locked -p motion-guest -p motion-toolkit --target wasm32-wasip2
}

# Builds the guest variants the tests swap between, into target/test-guests/.
build_test_guests() {
    step build "building the test guests"
    local out=target/test-guests wasm=target/wasm32-wasip2/release/motion_guest.wasm
    mkdir -p "$out"
    local feature
    for feature in reversed test-duplicate-label test-failing-classify; do
        cargo build --quiet --release --locked -p motion-guest --target wasm32-wasip2 --features "$feature"
        cp "$wasm" "$out/motion-${feature#test-}.wasm"
    done
    build_guest
    cp "$wasm" "$out/motion.wasm"
    local hostile=target/wasm32-wasip2/release/hostile_guest.wasm
    for feature in "" trap-info many-labels fail-marked import-in-realloc; do
        cargo build --quiet --release --locked -p hostile-guest --target wasm32-wasip2 --features "$feature"
        cp "$hostile" "$out/hostile${feature:+-$feature}.wasm"
    done
}
