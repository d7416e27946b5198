#!/usr/bin/env bash
# Make a headless Chromium available for the browser tests (tests/integration/test_docs_offline.py):
# install Debian's `chromium` package when it is missing (root), as docker/engine.sh does for Docker.
# Idempotent: nothing is done when the browser is already there. Prints the browser's path on
# stdout. Exit 2 when it cannot be had here (not root, or no apt-get), so the caller can skip the
# tests naming the reason instead of failing on something the code did not do.
set -euo pipefail

# Debian's package puts the browser here; CHROMIUM names another path (to try the script's other
# branches, or a browser installed by other means).
BROWSER="${CHROMIUM:-/usr/bin/chromium}"

log() { echo "[chromium] $*" >&2; }

if [ -x "$BROWSER" ]; then
    echo "$BROWSER"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "$BROWSER is missing and not root: cannot install the chromium package"
    exit 2
fi
if ! command -v apt-get >/dev/null; then
    log "$BROWSER is missing and there is no apt-get to install the chromium package with"
    exit 2
fi

started=$(date +%s)
log "installing chromium from Debian's packages (about 20 s on a warm mirror)"
export DEBIAN_FRONTEND=noninteractive
# Wait for a dpkg lock another install holds rather than fail. A stale package list names
# versions the mirror no longer has: update and retry once.
install_chromium() { apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 chromium; }
install_chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && install_chromium >/dev/null; }
[ -x "$BROWSER" ] || { log "chromium installed but $BROWSER is not there"; exit 1; }
log "chromium installed in $(($(date +%s) - started)) s: $("$BROWSER" --version 2>/dev/null || echo '?')"
echo "$BROWSER"
