"""The inference service's /docs (Swagger UI) and /redoc render every operation in a real browser
that reaches nothing beyond loopback, as on an air-gapped cluster: their JavaScript, CSS and
favicon come from the service itself (/docs-assets/), and no request of the page leaves it.

The service is a real `python -m inference_container` process against the session stack. The
browser is Debian's headless Chromium, installed on first use (tests/helpers/chromium.sh); where
it cannot be installed, the browser tests are skipped saying so. The same check run on FastAPI's
default page (Swagger UI from its CDN) finds no operation at all: that is the blank page operators
saw, and it shows the check can fail.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi.openapi.docs import get_swagger_ui_html

from flts_cli.stack import free_port
from tests.helpers.chromium import ChromiumUnavailable, ensure_chromium, render_offline
from tests.helpers.processes import ServiceProcess

Operation = tuple[str, str]  # (METHOD, path)


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return ensure_chromium()
    except ChromiumUnavailable as exc:
        pytest.skip(f"SKIPPED, /docs was NOT rendered in a browser: no headless Chromium here ({exc})")


@pytest.fixture(scope="module")
def service(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The inference service's base URL. It serves no station (none has a champion under this
    name): the pages need the schema, not a model."""
    suffix = uuid.uuid4().hex[:10]
    port = free_port()
    env = {
        **service_env,
        "IDENTIFIERS": f"docs-{suffix}",
        "TOPIC_MODEL_SELECTED": f"model-selected-docs-{suffix}",
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": str(port),
    }
    log_path = tmp_path_factory.mktemp("docs") / "inference.log"
    process = ServiceProcess("inference_container", env, log_path).start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(lambda: _status(url + "/healthz") == 200, 90, "/healthz to answer")
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def schema(service: str) -> dict[str, Any]:
    response = httpx.get(service + "/openapi.json", timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def test_docs_pages_load_every_file_from_the_service(service: str) -> None:
    for page in ("/docs", "/redoc"):
        response = httpx.get(service + page, timeout=10)
        assert response.status_code == 200, page
        links = _links(response.text)
        assert links, f"{page} loads no file at all"
        outside = [link for link in links if not link.startswith("/") or link.startswith("//")]
        assert not outside, f"{page} loads files from outside the service: {outside}"
        assert "http://" not in response.text and "https://" not in response.text, response.text
        for link in links:
            asset = httpx.get(service + link, timeout=10)
            assert asset.status_code == 200 and asset.content, f"{page} links {link}: {asset.status_code}"
        assert any(link.startswith("/docs-assets/") for link in links), links


def test_docs_render_every_operation_with_no_network_beyond_loopback(
    chromium: str, service: str, schema: dict[str, Any]
) -> None:
    rendering = render_offline(chromium, service + "/docs")
    assert _swagger_operations(rendering.dom) == _schema_operations(schema)
    assert {("POST", "/predict"), ("GET", "/model")} <= _swagger_operations(rendering.dom)
    _assert_only_from(service, rendering.requests)
    assert f"{service}/docs-assets/swagger-ui-bundle.js" in rendering.requests
    assert f"{service}/openapi.json" in rendering.requests


def test_redoc_renders_every_operation_with_no_network_beyond_loopback(
    chromium: str, service: str, schema: dict[str, Any]
) -> None:
    rendering = render_offline(chromium, service + "/redoc")
    operation_ids = {op["operationId"] for ops in schema["paths"].values() for op in ops.values()}
    assert _redoc_operations(rendering.dom) == operation_ids
    _assert_only_from(service, rendering.requests)
    assert f"{service}/docs-assets/redoc.standalone.js" in rendering.requests


def test_fastapi_default_docs_page_renders_nothing_offline(
    chromium: str, service: str, schema: dict[str, Any]
) -> None:
    """The page FastAPI serves by default, same schema, same origin for it: its Swagger UI comes
    from a CDN the browser cannot reach, so no operation appears."""
    page = bytes(get_swagger_ui_html(openapi_url="/openapi.json", title="FastAPI default").body)
    schema_body = httpx.get(service + "/openapi.json", timeout=10).content
    with _serving({"/docs": ("text/html", page), "/openapi.json": ("application/json", schema_body)}) as url:
        rendering = render_offline(chromium, url + "/docs")
    assert _schema_operations(schema), "the schema has operations to show"
    assert _swagger_operations(rendering.dom) == set()
    assert any(request.startswith("https://cdn.jsdelivr.net/") for request in rendering.requests), (
        rendering.requests
    )


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _assert_only_from(service: str, requests: tuple[str, ...]) -> None:
    outside = [url for url in requests if not url.startswith(service + "/")]
    assert not outside, f"the page asked for files outside the service: {outside}"


def _schema_operations(schema: dict[str, Any]) -> set[Operation]:
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


class _Collector(HTMLParser):
    """Calls `on_tag(tag, attributes)` for every start tag."""

    def __init__(self, on_tag: Callable[[str, dict[str, str]], None]) -> None:
        super().__init__()
        self.on_tag = on_tag

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.on_tag(tag, {name: value or "" for name, value in attrs})


def _parse(html: str, on_tag: Callable[[str, dict[str, str]], None]) -> None:
    parser = _Collector(on_tag)
    parser.feed(html)
    parser.close()


def _links(html: str) -> list[str]:
    """The files a page loads: script sources, stylesheets and icons."""
    links: list[str] = []

    def on_tag(tag: str, attrs: dict[str, str]) -> None:
        if tag == "script" and attrs.get("src"):
            links.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            links.append(attrs["href"])

    _parse(html, on_tag)
    return links


def _swagger_operations(dom: str) -> set[Operation]:
    """Swagger UI's operation blocks: `<div class="opblock opblock-post">` holding
    `<span class="opblock-summary-path" data-path="/predict">`."""
    found: set[Operation] = set()
    method = ""

    def on_tag(_tag: str, attrs: dict[str, str]) -> None:
        nonlocal method
        classes = attrs.get("class", "").split()
        if "opblock" in classes:
            method = next((c.removeprefix("opblock-") for c in classes if c.startswith("opblock-")), "")
        if "opblock-summary-path" in classes and method and "data-path" in attrs:
            found.add((method.upper(), attrs["data-path"]))

    _parse(dom, on_tag)
    return found


def _redoc_operations(dom: str) -> set[str]:
    """ReDoc's operation sections: `data-section-id="operation/<operationId>"`."""
    found: set[str] = set()

    def on_tag(_tag: str, attrs: dict[str, str]) -> None:
        section = attrs.get("data-section-id", "")
        if section.startswith("operation/"):
            found.add(section.removeprefix("operation/"))

    _parse(dom, on_tag)
    return found


@contextlib.contextmanager
def _serving(pages: dict[str, tuple[str, bytes]]) -> Iterator[str]:
    """A loopback HTTP server answering GET `path` with (content type, body) from `pages`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type, body = pages.get(self.path, ("text/plain", b""))
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
