# syntax=docker/dockerfile:1
# One recipe for every flts service image. Each image is a target of this file, built with the
# dependency group (pyproject.toml optional dependencies) of that service alone:
#
#   docker build --target train --build-arg EXTRA=trainer -t flts/train:dev .
#
# `make images` builds all of them with the right pairs (the IMAGES table in the Makefile).
# Build arguments:
#   BASE_IMAGE         the Python 3.11 base (default python:3.11-slim-bookworm)
#   EXTRA              the service's dependency group: preprocess, trainer, prophet-trainer,
#                      evaluator, inference, locust
#   TORCH_PIP_OPTIONS  where pip finds the CPU build of torch (default: PyTorch's CPU wheel index;
#                      `--find-links /wheels` takes a wheel placed in docker/wheels/ instead)
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG EXTRA
ARG TORCH_PIP_OPTIONS="--extra-index-url https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# A wheel here (docker/wheels/) is found by `--find-links /wheels`; the folder is otherwise empty.
COPY docker/wheels/ /wheels/
COPY requirements.lock pyproject.toml ./
# Dependencies before code, so a code change rebuilds no dependency layer. What makes an image
# heavy is its dependencies, so only the group of this image's service is installed (the project
# itself is copied below, not installed: its folders are not here yet, so this installs its
# metadata and the group). Torch resolves to its CPU build (2.13.0+cpu sorts above PyPI's 2.13.0,
# which would drag in ~3 GB of CUDA libraries). Byte-code stays: the root filesystem is read-only
# in the pod, so without it every start would compile in memory. Then what no service runs is
# dropped: test suites shipped inside wheels (torch's C++ test binaries alone are 83 MB), torch's
# C++ headers, and pip itself (a pod never installs).
# hadolint ignore=SC2086
RUN test -n "${EXTRA}" \
    && pip install -c requirements.lock ${TORCH_PIP_OPTIONS} ".[${EXTRA}]" \
    && site=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$site"/torch/test "$site"/torch/include \
    && find "$site" -mindepth 2 -maxdepth 3 -type d -name tests -prune -exec rm -rf {} + \
    && pip uninstall --yes --quiet pip

FROM ${BASE_IMAGE} AS runtime
# HOME and MPLCONFIGDIR point into the /tmp emptyDir: the root filesystem is read-only in the pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 flts \
    && useradd --system --uid 10001 --gid flts --no-create-home --home-dir /tmp flts
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The project's code last, on PYTHONPATH: a code change touches only these small layers. Its
# byte-code is compiled here because the root filesystem is read-only in the pod.
COPY shared/ shared/
COPY preprocess_container/ preprocess_container/
COPY train_container/ train_container/
COPY nonml_container/ nonml_container/
COPY eval_container/ eval_container/
COPY inference_container/ inference_container/
COPY batch_container/ batch_container/
RUN python -m compileall -q shared preprocess_container train_container nonml_container \
    eval_container inference_container batch_container

FROM runtime AS preprocess
# The Barcelona CSVs travel with this image: the job uploads them when the dataset bucket lacks them.
COPY data/*.csv data/README.md /app/data/
USER 10001:10001
# A Job: it runs to completion, so a container health check does not apply.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "preprocess_container"]

FROM runtime AS train
USER 10001:10001
# One trainer per container, so a fixed probe port (outside one, trainers default to any free port).
ENV HEALTH_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=9)"]
ENTRYPOINT ["python", "-m", "train_container"]

FROM runtime AS nonml
USER 10001:10001
ENV HEALTH_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=9)"]
ENTRYPOINT ["python", "-m", "nonml_container"]

FROM runtime AS eval
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "eval_container"]

FROM runtime AS inference
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "inference_container"]

FROM runtime AS batch
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "batch_container"]

FROM runtime AS locust
# The locustfile builds request bodies from the test CSVs.
COPY locust/ /app/locust/
COPY data/*.csv /app/data/
USER 10001:10001
EXPOSE 8089 5557
# The same image runs master and workers (no HTTP port): the pod spec holds the probes.
HEALTHCHECK NONE
ENTRYPOINT ["locust", "-f", "/app/locust/locustfile.py"]
