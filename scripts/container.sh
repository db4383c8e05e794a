# shellcheck shell=bash
# Sourced by scripts/test (after scripts/env.sh): sets up podman and builds the Dockerfile's
# CPU image for the container tests (tests/container.rs).
#
# No image registry is reachable from where the tests run, so the base images the Dockerfile
# names are made here: debian:bookworm-slim from debootstrap (cached as a tarball), and a
# builder base on top of it whose toolchain is this machine's own, lent to the build through
# volumes along with the cargo home, libtorch and target/. The crates are fetched on this
# machine first (with its own trust store) and the image's build runs offline (`cargo build
# --frozen`, MOTION_HOST_OFFLINE=1): it downloads nothing, and its `cargo build` finds its work
# done and finishes in seconds.
#
# The CA bundle this machine trusts (MOTION_HOST_CA_BUNDLE, else SSL_CERT_FILE or
# CURL_CA_BUNDLE, else Debian's bundle) is passed to the build as the secret `ca_bundle`, the
# Dockerfile's one way in for a proxy's CA, and named in MOTION_HOST_BUILD_CA for the test that
# checks it reached no layer of the image.

CONTAINER_PACKAGES=(podman runc netavark aardvark-dns catatonit iptables debootstrap)
DEBIAN_TAG=docker.io/library/debian:bookworm-slim
export MOTION_HOST_TEST_IMAGE=localhost/motion-host:test

# Installs podman and runc from Debian's packages when they are missing, and points podman at a
# configuration for this kind of machine: runc (crun refuses hybrid cgroups), cgroupfs (no
# systemd), logs podman can read back, and ulimits under the hard limits.
container_engine() {
    local missing=()
    for tool in podman runc debootstrap iptables; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if [ ${#missing[@]} -gt 0 ]; then
        debian_packages "the container tests" "${missing[*]}" "${CONTAINER_PACKAGES[@]}" || return 1
    fi
    # Rootful podman would ask for more open files than a sandboxed machine's hard limit allows,
    # and runc cannot set RLIMIT_NPROC above the kernel's pid_max here: ask for what fits.
    local nofile nproc=8192
    nofile="$(ulimit -Hn)"
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
    export MOTION_HOST_ULIMITS="nofile=$nofile:$nofile nproc=$nproc:$nproc"
    export CONTAINERS_CONF="$MOTION_HOST_CACHE/containers.conf"
    mkdir -p "$MOTION_HOST_CACHE"
    # scripts/cold-check keeps podman's run-time state away from the machine's own podman.
    local tmp_dir=""
    [ -n "${MOTION_HOST_PODMAN_TMPDIR:-}" ] && tmp_dir="tmp_dir = \"$MOTION_HOST_PODMAN_TMPDIR\""
    cat > "$CONTAINERS_CONF" <<CONF
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
$tmp_dir
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
CONF
}

# The base images the Dockerfile names, made locally.
base_images() {
    if ! podman image exists "$DEBIAN_TAG"; then
        local tarball="$MOTION_HOST_CACHE/base/debian-bookworm-minbase.tar"
        if [ ! -f "$tarball" ]; then
            step download "making $DEBIAN_TAG with debootstrap"
            local root="$MOTION_HOST_CACHE/base/root"
            rm -rf "$root"
            mkdir -p "$root"
            debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
            rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/{doc,man,locale}/*
            cat > "$root/etc/apt/sources.list" <<SOURCES
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
            tar -C "$root" -cf "$tarball.tmp" .
            mv "$tarball.tmp" "$tarball"
            rm -rf "$root"
        fi
        step image "importing $DEBIAN_TAG"
        podman import --quiet --change 'CMD ["bash"]' "$tarball" "$DEBIAN_TAG" >/dev/null
    fi
    # The builder base: the toolchain's own bin/ on PATH (not the rustup proxies, which live in
    # a cargo home), tagged by the paths it names so another toolchain or cargo home gets its own.
    local cargo_home="${CARGO_HOME:-$HOME/.cargo}" rustup_home sysroot
    rustup_home="$(rustup show home)"
    sysroot="$(rustc --print sysroot)"
    BUILDER_BASE="localhost/motion-host-builder-base:$(printf '%s\n' "$rustup_home" "$cargo_home" "$sysroot" | sha256sum | cut -c1-16)"
    if ! podman image exists "$BUILDER_BASE"; then
        step image "making the builder base $BUILDER_BASE from this machine's toolchain"
        printf 'FROM %s\nENV RUSTUP_HOME=%s CARGO_HOME=%s PATH=%s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' \
            "$DEBIAN_TAG" "$rustup_home" "$cargo_home" "$sysroot" \
            | podman build --quiet --pull=never -t "$BUILDER_BASE" -f - . >/dev/null
    fi
}

# The CA bundle to pass to the image build, if this machine has one.
build_ca_bundle() {
    local ca
    for ca in "${MOTION_HOST_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" "${CURL_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt; do
        if [ -n "$ca" ] && [ -s "$ca" ]; then
            printf '%s\n' "$ca"
            return 0
        fi
    done
}

# Builds the CPU image from the Dockerfile (or the stage named by $1), offline, lending the build
# this machine's toolchain, cargo home, libtorch and target/ (all at their own paths, so cargo's
# fingerprints match).
build_image() {
    local target="${1:-runtime}" tag="${2:-$MOTION_HOST_TEST_IMAGE}"
    container_engine
    base_images
    fetch_crates
    local cargo_home="${CARGO_HOME:-$HOME/.cargo}" rustup_home stamp started ulimits=() secret=()
    rustup_home="$(rustup show home)"
    stamp="$(git ls-files -s | sha256sum | cut -c1-16)-$(git diff HEAD | sha256sum | cut -c1-16)"
    for u in $MOTION_HOST_ULIMITS; do ulimits+=(--ulimit "$u"); done
    MOTION_HOST_BUILD_CA="$(build_ca_bundle)"
    export MOTION_HOST_BUILD_CA
    [ -n "$MOTION_HOST_BUILD_CA" ] && secret=(--secret "id=ca_bundle,src=$MOTION_HOST_BUILD_CA")
    started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    step image "building the container image $tag (stage $target, offline${MOTION_HOST_BUILD_CA:+, trusting $MOTION_HOST_BUILD_CA})"
    podman build --quiet --format docker --pull=never --layers "${ulimits[@]}" "${secret[@]}" \
        --build-arg RUST_IMAGE="$BUILDER_BASE" \
        --build-arg OFFLINE=true \
        --build-arg MOTION_HOST_CACHE="$MOTION_HOST_CACHE" \
        --build-arg SOURCE_STAMP="$stamp" \
        --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        -v "$PWD/target:/src/target" \
        -v "$cargo_home:$cargo_home" \
        -v "$rustup_home:$rustup_home" \
        -v "$MOTION_HOST_CACHE:$MOTION_HOST_CACHE" \
        --target "$target" -t "$tag" . >/dev/null
    prune_replaced_images "$started"
}

# Each build for new sources leaves the previous image and its builder stage untagged: about
# 1.8 GB that nothing uses again. Removes those made before this build started, and only this
# project's (by their labels), never another image on the machine.
prune_replaced_images() {
    local before="$1" label
    for label in org.opencontainers.image.title=motion-host io.motion-host.stage=builder; do
        podman image prune --force --filter "label=$label" --filter "until=$before" >/dev/null
    done
}
