# naiad's container image: a CPU variant (default) and a CUDA variant, backends chosen at build.
#
#   docker build -t naiad:cpu .
#   docker build -t naiad:cuda --build-arg VARIANT=cuda .
#   docker build -t naiad:cpu-torch --build-arg BACKENDS="onnx pytorch" .
#
# The entrypoint is `naiad`; it also takes tritonserver's argv (`tritonserver --model-store=...`),
# which is how KServe's Triton runtime starts its container, and /usr/local/bin/tritonserver
# runs `naiad tritonserver` for manifests that set `command: [tritonserver]`. See docs/deploy.md.
# This file is checked by tests/test_deploy.py (structure, hadolint); no container engine
# builds it in naiad's CI.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- the operating system and Python of each variant ----------------------------------------
FROM ${PYTHON_IMAGE} AS os-cpu

FROM ${CUDA_IMAGE} AS os-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM os-${VARIANT} AS os
# user 1000 is naiad's (Ubuntu's images come with a user 1000 of their own, "ubuntu")
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/naiad naiad

# ---- build: one virtual environment with naiad, its extras and the chosen backends ----------
FROM os AS build
ARG VARIANT
# any of: onnx pytorch tensorflow custom-example
ARG BACKENDS="onnx"
# naiad's optional extras: s3 gcs azure gpu (comma-separated)
ARG EXTRAS="s3,gcs,azure"
COPY core /src/core
COPY plugins /src/plugins
SHELL ["/bin/sh", "-eu", "-c"]
# $index and $packages are word lists: split on purpose
# hadolint ignore=SC2086
RUN python3 -m venv /opt/naiad \
    && packages="/src/core${EXTRAS:+[$EXTRAS]}" \
    && for backend in $BACKENDS; do \
         [ -d "/src/plugins/backend-$backend" ] && dir="/src/plugins/backend-$backend" \
           || dir="/src/plugins/$backend"; \
         [ -f "$dir/pyproject.toml" ] || { echo "unknown backend '$backend'" >&2; exit 1; }; \
         packages="$packages $dir"; \
       done \
    && index="" \
    && if [ "$VARIANT" = cpu ]; then \
         index="--extra-index-url https://download.pytorch.org/whl/cpu"; \
       fi \
    && /opt/naiad/bin/pip install --no-cache-dir $index $packages \
    && /opt/naiad/bin/naiad plugins

# ---- runtime: the environment, a non-root user, nothing else ---------------------------------
FROM os AS runtime
COPY --from=build /opt/naiad /opt/naiad
COPY deploy/docker/tritonserver /usr/local/bin/tritonserver
RUN chmod 0755 /usr/local/bin/tritonserver
ENV PATH=/opt/naiad/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/naiad
WORKDIR /home/naiad
USER 1000
# HTTP, gRPC (once naiad speaks it), metrics: Triton's default ports
EXPOSE 8000 8001 8002
ENTRYPOINT ["naiad"]
CMD ["serve", "--model-repository=/models"]
