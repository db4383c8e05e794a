# motion-host: the server, its default model and guest, and the libtorch libraries it links.
#
#   docker build -t motion-host .                                  # CPU image (the default)
#   docker build --target runtime-cuda -t motion-host:cuda .       # NVIDIA GPUs
#   docker run -p 8443:30751 -v "$PWD/tls:/etc/motion-host/tls:ro" motion-host '--bind=[::]:30751'
#
# The entrypoint is exec-form `motion-host serve`: whatever arguments the platform adds reach
# the server unchanged. The server writes only under /tmp (its state file, which the
# HEALTHCHECK's `motion-host healthcheck` reads to learn the bound address and scheme, and its
# compiled-guest cache), so the root filesystem may be mounted read-only.
#
# Behind a TLS-intercepting proxy, pass its CA bundle (a PEM file with every CA to trust, as
# SSL_CERT_FILE names on the host) as the build secret `ca_bundle`:
#
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t motion-host .
#
# apt, pip and cargo trust it in every step that downloads (scripts/with-build-ca); a secret is
# mounted only while a step runs, so no layer and no history entry of any image keeps it.
#
# A plain build downloads what it needs (apt packages, libtorch from PyPI, the wasm target, the
# crates). scripts/test instead fetches the crates and libtorch on the host and builds with
# OFFLINE=true, which makes the build use them (`cargo build --frozen`) and fail, naming the
# step, rather than download.

# Base images, overridable with --build-arg. The builder's glibc must not be newer than the
# runtime's: both are Debian bookworm.
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG CUDA_IMAGE=nvcr.io/nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM ${RUST_IMAGE} AS builder
COPY scripts/with-build-ca /usr/local/bin/with-build-ca
RUN --mount=type=secret,id=ca_bundle with-build-ca sh -euc '\
    apt-get update; \
    apt-get install -y --no-install-recommends g++ make python3 python3-pip ca-certificates binutils; \
    rm -rf /var/lib/apt/lists/*; \
    '
# Marks this stage's images (and the cuda-libs stage's, built on it) so that scripts/container.sh
# can remove the ones a newer build has replaced.
LABEL io.motion-host.stage="builder"
WORKDIR /src
COPY . .
# Changes when the sources do, so a cached layer is never reused for other sources.
ARG SOURCE_STAMP=none
ARG OFFLINE=false
ARG MOTION_HOST_CACHE
# scripts/env.sh fetches libtorch from PyPI (as the README's commands do) and adds the wasm
# target, or with OFFLINE=true finds them prepared; the build's products are staged in /out for
# the runtime stages.
RUN --mount=type=secret,id=ca_bundle with-build-ca bash -eEuo pipefail -c '\
    if [ "$OFFLINE" = true ]; then export MOTION_HOST_OFFLINE=1; lock=--frozen; else lock=--locked; fi; \
    source scripts/env.sh; \
    step build "building the default guest and the toolkit ($lock)"; \
    cargo build --release $lock -p motion-guest -p motion-toolkit --target wasm32-wasip2; \
    step build "building motion-host ($lock)"; \
    cargo build --release $lock -p motion-host; \
    step build "staging the image contents in /out"; \
    mkdir -p /out/bin /out/lib /out/guests /out/toolkit /out/models /out/licenses; \
    objcopy --strip-debug target/release/motion-host /out/bin/motion-host; \
    cp target/wasm32-wasip2/release/motion_guest.wasm /out/guests/motion.wasm; \
    cp target/wasm32-wasip2/release/motion_toolkit.wasm /out/toolkit/toolkit.wasm; \
    for so in libtorch_cpu.so libc10.so libgomp.so.1 libcudart.so.13 libcupti.so.13; do \
        cp "$LIBTORCH/lib/$so" /out/lib/; \
    done; \
    cp -r models/motion-resnet18 /out/models/; \
    rm -rf /out/models/motion-resnet18/train /out/models/motion-resnet18/*.py /out/models/motion-resnet18/*.png /out/models/motion-resnet18/*.txt; \
    cp LICENSE /out/licenses/LICENSE; \
    cp "$LIBTORCH/LICENSE.libtorch" /out/licenses/LICENSE.libtorch; \
    cp wit/deps/wasi-nn/README.md /out/licenses/LICENSE.wasi-nn-wit; \
    cp "$(find "$CARGO_HOME/registry/src" -path "*/tikv-jemalloc-sys-*/jemalloc/COPYING" | head -n 1)" \
        /out/licenses/LICENSE.jemalloc; \
    '

# The CUDA libraries: libtorch's own (from the torch wheel) and the NVIDIA wheels torch pins
# (CUDA 13.0, cuDNN 9, NCCL, cuSPARSELt, NVSHMEM), as pip resolves them for this torch.
FROM builder AS cuda-libs
RUN --mount=type=secret,id=ca_bundle with-build-ca bash -eEuo pipefail -c '\
    source scripts/env.sh; \
    step download "fetching the CUDA wheels torch $TORCH_VERSION pins"; \
    python3 -m pip download --quiet --dest /tmp/wheels "torch==$TORCH_VERSION"; \
    python3 scripts/extract-libs.py /tmp/wheels /out/cuda-lib; \
    rm -rf /tmp/wheels; \
    '

# The GPU image: the same binary on NVIDIA's CUDA runtime base (the host needs a driver for
# CUDA 13.0 and the NVIDIA container toolkit). With --device auto the server loads
# libtorch_cuda.so from $LIBTORCH/lib and runs on the GPU when one is visible.
FROM ${CUDA_IMAGE} AS runtime-cuda
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="motion-host" \
      org.opencontainers.image.description="WebAssembly-plugin model host serving a camera-motion classifier (CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/motion-host/motion-host" \
      org.opencontainers.image.licenses="Apache-2.0 AND BSD-3-Clause AND BSD-2-Clause AND LicenseRef-NVIDIA-CUDA"
RUN groupadd --system --gid 10001 motion \
    && useradd --system --uid 10001 --gid motion --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin motion
COPY --from=cuda-libs /out/cuda-lib/ /opt/motion-host/lib/
RUN echo /opt/motion-host/lib > /etc/ld.so.conf.d/motion-host.conf && ldconfig
COPY --from=builder /out/models/ /opt/motion-host/models/
COPY --from=builder /out/licenses/ /usr/share/doc/motion-host/
COPY --from=builder /out/guests/ /opt/motion-host/guests/
COPY --from=builder /out/toolkit/ /opt/motion-host/toolkit/
COPY --from=builder /out/bin/motion-host /usr/local/bin/motion-host
ENV LIBTORCH=/opt/motion-host \
    MOTION_HOST_MODEL_DIR=/opt/motion-host/models \
    MOTION_HOST_GUEST=motion=/opt/motion-host/guests/motion.wasm \
    MOTION_HOST_TOOLKIT=/opt/motion-host/toolkit/toolkit.wasm \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /opt/motion-host
USER 10001:10001
VOLUME ["/tmp"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["motion-host", "healthcheck"]
ENTRYPOINT ["motion-host", "serve"]

# The CPU image, the default target (last): a slim Debian with only what runs.
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="motion-host" \
      org.opencontainers.image.description="WebAssembly-plugin model host serving a camera-motion classifier" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/motion-host/motion-host" \
      org.opencontainers.image.licenses="Apache-2.0 AND BSD-3-Clause AND BSD-2-Clause"
RUN groupadd --system --gid 10001 motion \
    && useradd --system --uid 10001 --gid motion --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin motion
# Least often changed first: libraries, model, licences, guest, binary.
COPY --from=builder /out/lib/ /opt/motion-host/lib/
RUN echo /opt/motion-host/lib > /etc/ld.so.conf.d/motion-host.conf && ldconfig
COPY --from=builder /out/models/ /opt/motion-host/models/
COPY --from=builder /out/licenses/ /usr/share/doc/motion-host/
COPY --from=builder /out/guests/ /opt/motion-host/guests/
COPY --from=builder /out/toolkit/ /opt/motion-host/toolkit/
COPY --from=builder /out/bin/motion-host /usr/local/bin/motion-host
ENV LIBTORCH=/opt/motion-host \
    MOTION_HOST_MODEL_DIR=/opt/motion-host/models \
    MOTION_HOST_GUEST=motion=/opt/motion-host/guests/motion.wasm \
    MOTION_HOST_TOOLKIT=/opt/motion-host/toolkit/toolkit.wasm
WORKDIR /opt/motion-host
USER 10001:10001
VOLUME ["/tmp"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["motion-host", "healthcheck"]
ENTRYPOINT ["motion-host", "serve"]
