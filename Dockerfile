# sampler on NVIDIA GPUs: python slim + jax[cuda12] wheels (they bundle CUDA and cuDNN as pip
# packages, so no CUDA base image is needed; the host needs only the NVIDIA driver and the container
# toolkit).  Build:  docker build -t sampler:0.1.0 .
# Run:    docker run --gpus all -v /mnt/shared:/mnt/shared sampler:0.1.0 run /mnt/shared/cfg.toml
# The same image is the Ray head/worker image of cluster/*.yaml (they override the entrypoint).
FROM python:3.11-slim-bookworm

# wget: KubeRay's readiness/liveness probes call it inside Ray pods
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XLA_PYTHON_CLIENT_PREALLOCATE=false

WORKDIR /opt/sampler

# Dependencies first, from pyproject.toml alone (an empty package stands in for the source), so
# that editing the source does not re-download the multi-GB CUDA wheels.
COPY pyproject.toml README.md ./
RUN mkdir sampler && touch sampler/__init__.py \
    && pip install ".[cuda,s3,gcs]" \
    && pip uninstall -y sampler \
    && rm -rf sampler

# Then the package itself (no dependency resolution: they are installed above).
COPY sampler ./sampler
RUN pip install --no-deps . && rm -rf build

ENTRYPOINT ["sampler"]
CMD ["--help"]
