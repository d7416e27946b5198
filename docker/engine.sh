#!/usr/bin/env bash
# Make a Docker engine and the base image available on this machine, from nothing:
#   1. install Docker Engine and debootstrap from Debian's packages when they are missing (root);
#   2. start dockerd when no daemon answers (no iptables or bridge: containers use the host network);
#   3. build the base image when it is not there: no registry is reachable here, so a Debian
#      root filesystem made with debootstrap stands in for python:3.11-slim-bookworm.
# Idempotent: each step is skipped when its result is already there. Exit 2 when Docker cannot
# run here at all (not root and no daemon), so callers can say so instead of failing obscurely.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
STATE_DIR="${FLTS_DOCKER_STATE:-/var/tmp/flts-docker}"
# The Debian archive this machine's apt sources name; override for another mirror.
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "[engine] $*" >&2; }

daemon_answers() { timeout 10 docker info >/dev/null 2>&1; }

if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        log "docker/debootstrap missing and not root: cannot install them"
        exit 2
    fi
    log "installing docker.io and debootstrap from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q docker.io debootstrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q docker.io debootstrap >/dev/null; }
fi

if ! daemon_answers; then
    if [ "$(id -u)" != 0 ]; then
        log "no Docker daemon answers and not root: cannot start one"
        exit 2
    fi
    mkdir -p "$STATE_DIR"
    log "starting dockerd (log: $STATE_DIR/dockerd.log)"
    # No iptables and no bridge: this sandbox allows neither; every container runs with --network host.
    nohup dockerd --iptables=false --ip6tables=false --bridge=none >"$STATE_DIR/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
        daemon_answers && break
        sleep 1
    done
    daemon_answers || { log "dockerd did not answer within 60 s"; tail -20 "$STATE_DIR/dockerd.log" >&2; exit 1; }
fi

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
    exit 0
fi

rootfs="$STATE_DIR/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"
log "debootstrap bookworm from $MIRROR (about 2 minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$STATE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$STATE_DIR/debootstrap.log" >&2; exit 1; }
ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
# The machine's CA bundle: pip inside builds must trust the same registries the host does.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
rm -rf "$rootfs"
log "base image $BASE_IMAGE imported ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
