"""A headless Chromium that reaches nothing but loopback: render a page, read the DOM it built
and every request the page made.

`ensure_chromium()` installs Debian's chromium when missing (tests/helpers/chromium.sh) and
raises ChromiumUnavailable, with the reason, when it cannot. `render_offline(url)` loads a page
with every name resolving to nothing (except 127.0.0.1) and every other connection sent to a
proxy that refuses it, so a page that needs the internet renders as it would on an air-gapped
cluster. The network log tells which requests the page itself made (the browser's own update and
account checks are left out).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM_SCRIPT = Path(__file__).with_name("chromium.sh")
# Chromium counts virtual time only while nothing is loading: a budget is the page's own timers
# (Swagger UI renders after its fetch of the schema), not a wall-clock wait for the network.
VIRTUAL_TIME_BUDGET_MS = 15_000
RENDER_TIMEOUT_S = 120.0


class ChromiumUnavailable(RuntimeError):
    """No Chromium here and none can be installed (not root, or no apt-get)."""


@dataclass(frozen=True)
class Rendering:
    dom: str  # the DOM after the page's scripts ran, serialised
    requests: tuple[str, ...]  # URLs the page requested, in order (the page itself first)


def ensure_chromium() -> str:
    """The browser's path, installed first when missing. Raises ChromiumUnavailable naming why
    not; any other failure of the install is an error."""
    result = subprocess.run(
        ["bash", str(CHROMIUM_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode == 2:
        raise ChromiumUnavailable(result.stderr.strip())
    if result.returncode != 0:
        raise RuntimeError(f"{CHROMIUM_SCRIPT} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def render_offline(browser: str, url: str) -> Rendering:
    """Load `url` (on 127.0.0.1) with no network beyond loopback; the DOM once the page settled,
    and the requests it made."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp, _refusing_port() as dead_port:
        net_log = Path(tmp) / "net.json"
        argv = [
            browser,
            "--headless",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp}/profile",
            # No name resolves but 127.0.0.1, and every connection that is not loopback goes to a
            # port nothing listens on (loopback bypasses a proxy by default): nothing leaves.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--proxy-server=http://127.0.0.1:{dead_port}",
            f"--log-net-log={net_log}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            "--dump-dom",
            url,
        ]
        if os.geteuid() == 0:
            # Chromium's sandbox refuses to run as root.
            argv.insert(1, "--no-sandbox")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False)
        if result.returncode != 0 or not result.stdout.strip():
            raise RuntimeError(f"chromium exited {result.returncode} on {url}: {result.stderr[-2000:]}")
        return Rendering(result.stdout, page_requests(json.loads(net_log.read_text())))


def page_requests(net_log: dict[str, Any]) -> tuple[str, ...]:
    """URLs the page asked for: the page itself (the main frame) and every request a page on
    127.0.0.1 initiated. The browser's own (updates, accounts, autofill, spelling dictionaries)
    have no initiating origin."""
    start_job = net_log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in net_log["events"]:
        params = event.get("params") or {}
        if event["type"] != start_job or "url" not in params:
            continue
        initiator = str(params.get("initiator", ""))
        if params.get("request_type") == "main frame" or initiator.startswith("http://127.0.0.1:"):
            urls.append(params["url"])
    return tuple(urls)


@contextlib.contextmanager
def _refusing_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 without listening: every connection to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
