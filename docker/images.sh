#!/usr/bin/env bash
# Build every flts image: the seven services (targets of ./Dockerfile, each with its own dependency
# group) and the MLflow tracking server the manifests run. Makes the Docker engine and the base
# image first when they are missing (docker/engine.sh). Prints each image's size and what it adds
# over the base image.
#
#   IMAGE_TAG   tag of every image (default: the version the manifests name, written once in
#               .kubernetes/base/kustomization.yaml as `newTag: &version X`)
#   BASE_IMAGE  the Python base (default python:3.11-slim-bookworm)
set -euo pipefail
cd "$(dirname "$0")/.."

# The one place the image version is set; the manifests and the kind quickstart use the same.
KUSTOMIZATION=.kubernetes/base/kustomization.yaml
version="$(sed -n 's/^ *newTag: *&version *\([^ #]*\).*$/\1/p' "$KUSTOMIZATION")"
if [ -z "$version" ] || [ "$(printf '%s\n' "$version" | wc -l)" -ne 1 ]; then
    echo "[images] no single 'newTag: &version X' in $KUSTOMIZATION" >&2
    exit 1
fi
TAG="${IMAGE_TAG:-$version}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
export BASE_IMAGE

bash docker/engine.sh

# PyTorch's CPU wheel index is the default source of torch; where pip is configured with a local
# folder that holds the CPU wheel (find-links), the build takes that wheel instead.
torch_options=()
find_links="${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}"
wheel="$(ls "${find_links:-/nonexistent}"/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1 || true)"
if [ -n "$wheel" ]; then
    [ -f "docker/wheels/$(basename "$wheel")" ] || cp "$wheel" docker/wheels/
    torch_options=(--build-arg "TORCH_PIP_OPTIONS=--find-links /wheels")
    echo "[images] torch from $wheel" >&2
fi

# image  target     dependency group
services="
preprocess preprocess preprocess
train      train      trainer
nonml      nonml      prophet-trainer
eval       eval       evaluator
inference  inference  inference
batch      batch      batch
locust     locust     locust
"
logs="$(mktemp -d)"
build() {
    # The legacy builder is what Debian's docker.io offers; --network host lets pip reach the index.
    local name="$1" log
    log="$logs/$(echo "$1" | tr '/:' '__').log"
    shift
    if ! DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" \
        >"$log" 2>&1; then
        echo "[images] $name FAILED:" >&2
        tail -40 "$log" >&2
        return 1
    fi
    echo "[images] $name built" >&2
}
# Two builds at a time: a build waits on the network and the disk as much as on a core.
pids=()
while read -r image target extra; do
    [ -n "$image" ] || continue
    echo "[images] flts/$image:$TAG (target $target, group $extra)" >&2
    build "flts/$image:$TAG" --target "$target" --build-arg "EXTRA=$extra" "${torch_options[@]}" \
        -t "flts/$image:$TAG" . &
    pids+=("$!")
    if [ "${#pids[@]}" -ge 2 ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done <<<"$services"
echo "[images] flts/mlflow:$TAG" >&2
build "flts/mlflow:$TAG" -f .kubernetes/images/mlflow/Dockerfile -t "flts/mlflow:$TAG" . &
pids+=("$!")
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
rm -rf "$logs"
[ -z "${failed:-}" ] || exit 1

base_size="$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")"
printf '%-22s %10s %14s\n' image "size MB" "over base MB"
for image in preprocess train nonml eval inference batch locust mlflow; do
    size="$(docker image inspect -f '{{.Size}}' "flts/$image:$TAG")"
    printf '%-22s %10d %14d\n' "flts/$image:$TAG" $((size / 1000000)) $(((size - base_size) / 1000000))
done
