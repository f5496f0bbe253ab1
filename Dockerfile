# syntax=docker/dockerfile:1.7
# One image for the svg2 API (`svg2-api`, the default command) and the GPU workers (`svg2-worker`).
#
#   docker build -t svg2:0.1.0 .                      (or: docker compose -f deploy/compose.yaml build)
#
# CUDA 13.0 runtime base + the PyTorch build for CUDA 13.0 (cu130): torch brings its own cuDNN/cuBLAS
# wheels pinned to exact versions; the base image supplies the CUDA runtime and the driver hooks of
# the NVIDIA container toolkit. Host driver: R580 or newer (CUDA 13). Other pinned dependencies:
# deploy/requirements.lock.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ------------------------------------------------------------------------------------------------
# Build stage: a virtual environment with every dependency, then the project itself (no sources,
# no compilers and no pip cache reach the final image).
FROM ${CUDA_IMAGE} AS build

ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first (their layer survives source edits): torch from the CUDA index, the rest pinned.
RUN pip install --index-url ${TORCH_INDEX_URL} "torch==${TORCH_VERSION}"
COPY deploy/requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock

COPY pyproject.toml README.md /src/
COPY svg2core /src/svg2core
COPY service /src/service
COPY worker /src/worker
# --no-deps: everything is pinned above; `pip check` fails the build if the pins do not fit.
RUN pip install --no-deps /src && pip check

# ------------------------------------------------------------------------------------------------
# Runtime stage: the CUDA runtime, Python and the virtual environment; runs as an unprivileged user.
FROM ${CUDA_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 svg2 \
    && useradd --system --uid 10001 --gid svg2 --create-home --home-dir /home/svg2 svg2 \
    && mkdir -p /data/outputs /models /var/cache/svg2 \
    && chown svg2:svg2 /data/outputs /var/cache/svg2

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SVG2_HOST=0.0.0.0 \
    SVG2_PORT=8000 \
    SVG2_OUTPUT_DIR=/data/outputs \
    SVG2_METRICS_PORT=9410 \
    SVG2_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz \
    HF_HUB_CACHE=/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER svg2
WORKDIR /home/svg2

# 8000: the API (SVG2_PORT); 9410: a worker's /metrics (SVG2_METRICS_PORT).
EXPOSE 8000 9410

# The API answers /healthz; a worker sets SVG2_HEALTHCHECK_URL to its metrics endpoint.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SVG2_HEALTHCHECK_URL'], timeout=5)"]

CMD ["svg2-api"]
