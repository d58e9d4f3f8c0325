# syntax=docker/dockerfile:1.7
#
# unCLIP service image. One image, two roles (docker-compose.yml runs both):
#   api     `unclip api --host 0.0.0.0 --port 8000` (the default CMD); HEALTHCHECK below probes GET /healthz.
#   worker  `unclip worker`; its health is its metrics endpoint (:9101/metrics must answer and report
#           `unclip_worker_up 1`): compose overrides the health check with `unclip-healthcheck worker`.
#
# Build (BuildKit is required for the cache mounts; it is the default builder since Docker 23):
#   docker build -t unclip-service:dev .
#
# Why python:3.11-slim for the final stage and not nvidia/cuda:12.x-cudnn-runtime:
#   * torch's Linux wheels on PyPI depend on the nvidia-*-cu12 wheels (cudart, cublas, cudnn, nccl, ...),
#     so the CUDA user-space libraries already live inside the virtualenv. A CUDA runtime base image
#     would add a second, unused copy (several GB) and, on ubuntu22.04, Python 3.10 (we need 3.11).
#   * What a GPU container needs from the host is the driver (libcuda.so, NVML, nvidia-smi). The NVIDIA
#     Container Toolkit mounts it into ANY image when the container requests a GPU: compose's
#     `deploy.resources.reservations.devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]`
#     or `docker run --gpus 1`. NVIDIA_DRIVER_CAPABILITIES below tells the toolkit which driver parts
#     to mount (compute = CUDA, utility = nvidia-smi/NVML), exactly as the nvidia/cuda images do.
#   * Host requirement: a driver new enough for the CUDA version torch was built with
#     (`docker run --rm IMAGE python -c 'import torch; print(torch.version.cuda)'` vs `nvidia-smi`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# builder: a virtualenv at /opt/venv, filled in three layers from the least to the most often changed.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/venv/bin:${PATH}"

RUN python -m venv /opt/venv

WORKDIR /src

# Layer 1: torch + torchvision, pinned exactly as in pyproject.toml (tests/test_deploy_files.py checks that
# the two pins agree). Multi-GB with the CUDA wheels, so it goes first and is rebuilt only when the pin moves.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# Layer 2: the other runtime dependencies, read from pyproject.toml's [project].dependencies (there is no
# lock file; this layer is rebuilt only when pyproject.toml changes, not on every source edit).
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Layer 3: the project itself (non-editable; the bundled weights in models/default_weights/ are package data).
COPY README.md ./
COPY cli ./cli
COPY contract ./contract
COPY models ./models
COPY service ./service
COPY workers ./workers
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && pip check

# ---------------------------------------------------------------------------------------------------------
# runtime: the virtualenv, two small scripts, a non-root user. No pip cache, no source tree.
FROM ${PYTHON_IMAGE} AS runtime

# A C++ compiler, for torch.compile only (UNCLIP_COMPILE_UNETS, UNCLIP_CUDA_GRAPHS): Inductor builds the
# kernels it generates for the CPU as C++, and Triton builds its CUDA launcher from C, at run time. Without
# one, a worker with compiling on fails at its warm-up. About 200 MB beside torch's CUDA wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
 && rm -rf /var/lib/apt/lists/*

LABEL org.opencontainers.image.title="unclip-service" \
      org.opencontainers.image.description="Open unCLIP (DALL-E 2) text-to-image service: FastAPI API and rq GPU workers" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric uid/gid (10001) so volume ownership and Kubernetes' runAsNonRoot work without name lookups.
# /data/images is the shared image volume: a fresh named volume copies this directory's owner.
RUN groupadd --system --gid 10001 unclip \
 && useradd --system --uid 10001 --gid unclip --create-home --home-dir /home/unclip --shell /usr/sbin/nologin unclip \
 && mkdir -p /data/images /data/compile-cache /run/unclip/prometheus \
 && chown -R unclip:unclip /data /run/unclip

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/unclip-entrypoint
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/unclip-healthcheck

# PROMETHEUS_MULTIPROC_DIR: `unclip api --workers N` runs N uvicorn processes that share metric values
# through files here; the entrypoint empties it at every container start (stale files from dead pids would
# otherwise be summed into the counters). The worker serves its own registry on :9101 and is unaffected.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_MULTIPROC_DIR=/run/unclip/prometheus \
    UNCLIP_STORAGE_DIR=/data/images \
    UNCLIP_COMPILE_CACHE_DIR=/data/compile-cache \
    UNCLIP_WORKER_METRICS_PORT=9101 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /home/unclip
USER 10001:10001

# 8000: the API (and its /metrics); 9101: a worker's /metrics (UNCLIP_WORKER_METRICS_PORT).
EXPOSE 8000 9101

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/unclip-healthcheck", "api"]

ENTRYPOINT ["/usr/local/bin/unclip-entrypoint"]
CMD ["unclip", "api", "--host", "0.0.0.0", "--port", "8000"]
