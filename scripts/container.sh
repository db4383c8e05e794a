# shellcheck shell=bash
# Sourced by scripts/test (after scripts/env.sh): sets up podman and builds the Dockerfile's
# CPU image for the container tests (tests/container.rs).
#
# No image registry is reachable from where the tests run, so the base images the Dockerfile
# names are made here: debian:bookworm-slim from debootstrap (cached as a tarball), and a
# rust:*-slim-bookworm on top of it whose toolchain is this machine's own, lent to the build
# through volumes along with the cargo cache, libtorch and target/. The Dockerfile's own
# `cargo build` then finds its work done and finishes in seconds.

CONTAINER_PACKAGES=(podman runc netavark aardvark-dns catatonit iptables debootstrap)
RUST_VERSION="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
DEBIAN_TAG=docker.io/library/debian:bookworm-slim
RUST_TAG="docker.io/library/rust:$RUST_VERSION-slim-bookworm"
export MOTION_HOST_TEST_IMAGE=localhost/motion-host:test

# Installs podman and runc from Debian's packages when they are missing, and points podman at a
# configuration for this kind of machine: runc (crun refuses hybrid cgroups), cgroupfs (no
# systemd), logs podman can read back, and ulimits under the hard limits.
container_engine() {
    local missing=()
    for tool in podman runc debootstrap iptables; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            say "the container tests need ${missing[*]}: apt-get install ${CONTAINER_PACKAGES[*]}"
            return 1
        fi
        say "installing ${CONTAINER_PACKAGES[*]} (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${CONTAINER_PACKAGES[@]}" >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${CONTAINER_PACKAGES[@]}" >/dev/null; }
    fi
    # Rootful podman would ask for more open files than a sandboxed machine's hard limit allows,
    # and runc cannot set RLIMIT_NPROC above the kernel's pid_max here: ask for what fits.
    local nofile nproc=8192
    nofile="$(ulimit -Hn)"
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
    export MOTION_HOST_ULIMITS="nofile=$nofile:$nofile nproc=$nproc:$nproc"
    export CONTAINERS_CONF="$MOTION_HOST_CACHE/containers.conf"
    mkdir -p "$MOTION_HOST_CACHE"
    cat > "$CONTAINERS_CONF" <<CONF
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
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
            say "making $DEBIAN_TAG with debootstrap"
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
        podman import --quiet --change 'CMD ["bash"]' "$tarball" "$DEBIAN_TAG" >/dev/null
    fi
    if ! podman image exists "$RUST_TAG"; then
        say "making $RUST_TAG from this machine's toolchain"
        local cargo_home="${CARGO_HOME:-$HOME/.cargo}" rustup_home
        rustup_home="$(rustup show home)"
        printf 'FROM %s\nENV RUSTUP_HOME=%s CARGO_HOME=%s PATH=%s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' \
            "$DEBIAN_TAG" "$rustup_home" "$cargo_home" "$cargo_home" \
            | podman build --quiet --pull=never -t "$RUST_TAG" -f - . >/dev/null
    fi
}

# Builds the CPU image from the Dockerfile, lending the build this machine's toolchain, cargo
# cache, libtorch and target/ (all at their own paths, so cargo's fingerprints match).
build_image() {
    container_engine
    base_images
    local cargo_home="${CARGO_HOME:-$HOME/.cargo}" rustup_home stamp ulimits=()
    rustup_home="$(rustup show home)"
    stamp="$(git ls-files -s | sha256sum | cut -c1-16)-$(git diff HEAD | sha256sum | cut -c1-16)"
    for u in $MOTION_HOST_ULIMITS; do ulimits+=(--ulimit "$u"); done
    say "building the container image $MOTION_HOST_TEST_IMAGE"
    podman build --quiet --format docker --pull=never --layers "${ulimits[@]}" \
        --build-arg MOTION_HOST_CACHE="$MOTION_HOST_CACHE" \
        --build-arg SOURCE_STAMP="$stamp" \
        --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        -v "$PWD/target:/src/target" \
        -v "$cargo_home:$cargo_home" \
        -v "$rustup_home:$rustup_home" \
        -v "$MOTION_HOST_CACHE:$MOTION_HOST_CACHE" \
        --target runtime -t "$MOTION_HOST_TEST_IMAGE" . >/dev/null
}
