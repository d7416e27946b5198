"""Hostile HTTP against a real uvicorn inference process (`python -m inference_container`).

Every hostile request must get a 4xx within a bounded time, the process RSS must stay bounded,
and a stream of valid requests running at the same time must see nothing but 200s.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psutil
import pytest

from flts_cli.stack import StackConfig, free_port
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.waiting import wait_until
from tests.integration.test_inference_support import (
    load_test_split,
    log_model_run,
    make_pointer,
    window_body,
    write_pointer,
)
from tests.reliability.support import http_status, unique

HOSTILE_TIMEOUT_S = 10.0  # the bound on any hostile request's answer
RSS_GROWTH_LIMIT = 300 * 2**20  # bytes: a 50 MB body must never be held, let alone copied


@pytest.fixture(scope="module")
def server(
    stack: StackConfig, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServiceProcess]]:
    root = tmp_path_factory.mktemp("hostile-http")
    identifier = unique("hostile")
    logged = log_model_run(stack, root, identifier=identifier, seed=5)
    bucket = unique("promotion")
    store = ObjectStore(stack.s3_url, stack.access_key, stack.secret_key)
    store.ensure_bucket(bucket)
    write_pointer(store, make_pointer(logged, identifier), bucket=bucket)
    port = free_port()
    env = {
        **service_env,
        "IDENTIFIERS": identifier,
        "BUCKET_PROMOTION": bucket,
        "TOPIC_MODEL_SELECTED": unique("model-selected"),
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": str(port),
        "LOG_LEVEL": "INFO",
    }
    process = ServiceProcess("inference_container", env, root / "inference.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.alive() and http_status(url + "/readyz") == 200, 90, "the model to be served"
        )
        yield url, process
    finally:
        process.stop()


def valid_body() -> dict[str, Any]:
    return window_body(load_test_split(), start=100, rows=10)


def with_timestamps(stamps: list[str]) -> bytes:
    body = valid_body()
    body["data"]["ts"] = stamps
    return orjson.dumps(body)


def ten_thousand_columns() -> bytes:
    body = valid_body()
    for i in range(10_000):
        body["data"][f"extra_{i}"] = [1.0] * 10
    return orjson.dumps(body)


def with_kpi(name: str, values: list[float]) -> bytes:
    body = valid_body()
    body["data"][name] = values
    return orjson.dumps(body)


def nested(depth: int) -> bytes:
    return b'{"data": ' + b"[" * depth + b"]" * depth + b"}"


def hostile_requests() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """name -> (path and query, body, headers)."""
    json_header = {"Content-Type": "application/json"}
    huge_horizon = valid_body()
    huge_horizon["inference_length"] = 10**9
    return {
        "malformed JSON": ("/predict", b'{"data": {"ts": [1, 2,', json_header),
        "wrong content type": ("/predict", orjson.dumps(valid_body()), {"Content-Type": "text/plain"}),
        "deeply nested JSON": ("/predict", nested(100_000), json_header),
        "10,000 columns": ("/predict", ten_thousand_columns(), json_header),
        "inference_length 1e9 in body": ("/predict", orjson.dumps(huge_horizon), json_header),
        "inference_length 1e9 in query": (
            "/predict?inference_length=1000000000",
            orjson.dumps(valid_body()),
            json_header,
        ),
        "timestamps in year 1": (
            "/predict",
            with_timestamps([f"0001-01-01 00:{2 * i:02d}:00" for i in range(10)]),
            json_header,
        ),
        "timestamps in year 9999 (horizon overflows)": (
            "/predict?inference_length=720",
            with_timestamps([f"9999-12-31 23:{2 * i + 30:02d}:00" for i in range(10)]),
            json_header,
        ),
        "mixed time zones, instants out of order": (
            "/predict",
            with_timestamps([f"2019-03-01T10:{2 * i:02d}:00{'+02:00' if i % 2 else 'Z'}" for i in range(10)]),
            json_header,
        ),
        "mixed naive and zoned timestamps": (
            "/predict",
            with_timestamps([f"2019-03-01T10:{2 * i:02d}:00{'Z' if i % 2 else ''}" for i in range(10)]),
            json_header,
        ),
        "a window of negative traffic": ("/predict", with_kpi("down", [-3.27e8] * 10), json_header),
        "a KPI of 1e30": ("/predict", with_kpi("up", [1e30] * 10), json_header),
        "mixed offsets on a regular UTC grid": (
            "/predict",
            with_timestamps(
                [
                    f"2019-03-01T{10 + 2 * (i % 2):02d}:{2 * i:02d}:00{'+02:00' if i % 2 else 'Z'}"
                    for i in range(10)
                ]
            ),
            json_header,
        ),
    }


def stream_valid(url: str, stop: threading.Event, outcomes: list[int]) -> None:
    body = orjson.dumps(valid_body())
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                outcomes.append(
                    client.post(
                        "/predict", content=body, headers={"Content-Type": "application/json"}
                    ).status_code
                )
            except httpx.HTTPError:
                outcomes.append(0)


def send_50_mb(url: str) -> int:
    """Stream 50 MB at the server; the answer must come early (a 413), not after the upload."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"[" + b"1," * (2**20 // 2)
    total = 50 * 2**20
    with socket.create_connection((host, int(port)), timeout=HOSTILE_TIMEOUT_S) as sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {total}\r\n\r\n"
        )
        sock.sendall(head.encode())
        sent = 0
        try:
            while sent < total:
                piece = chunk[: total - sent]
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # the server answered and closed: exactly what a size limit should do
        answer = sock.recv(4096).decode(errors="replace")
    return int(answer.split(" ", 2)[1]) if answer.startswith("HTTP/1.1") else 0


@pytest.mark.parametrize("name", list(hostile_requests()))
def test_each_hostile_request_is_refused_with_a_4xx_naming_the_problem(
    server: tuple[str, ServiceProcess], name: str
) -> None:
    url, _process = server
    path, body, headers = hostile_requests()[name]
    response = httpx.post(url + path, content=body, headers=headers, timeout=HOSTILE_TIMEOUT_S)
    assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:200]}"
    assert response.json()["detail"], response.text


def test_hostile_requests_never_5xx_and_answer_quickly_with_bounded_memory_while_valid_traffic_flows(
    server: tuple[str, ServiceProcess],
) -> None:
    url, process = server
    rss = psutil.Process(process.pid)
    baseline = rss.memory_info().rss
    stop = threading.Event()
    outcomes: list[int] = []
    streamer = threading.Thread(target=stream_valid, args=(url, stop, outcomes), daemon=True)
    streamer.start()
    answers: dict[str, tuple[int, float]] = {}
    messages: dict[str, str] = {}
    peak = baseline
    try:
        with httpx.Client(base_url=url, timeout=HOSTILE_TIMEOUT_S) as client:
            for name, (path, body, headers) in hostile_requests().items():
                started = time.perf_counter()
                response = client.post(path, content=body, headers=headers)
                answers[name] = (response.status_code, time.perf_counter() - started)
                messages[name] = response.text[:300]
                peak = max(peak, rss.memory_info().rss)
        started = time.perf_counter()
        answers["50 MB body"] = (send_50_mb(url), time.perf_counter() - started)
        peak = max(peak, rss.memory_info().rss)
        time.sleep(0.5)
    finally:
        stop.set()
        streamer.join(15)
    for name, (code, seconds) in answers.items():
        print(f"{name}: {code} in {seconds * 1000:.0f} ms: {messages.get(name, '')[:150]}")
    growth_mib = (peak - baseline) / 2**20
    print(f"valid requests during the attack: {len(outcomes)}; rss growth {growth_mib:.1f} MiB")
    for name, (code, seconds) in answers.items():
        assert 0 < code < 500, f"{name}: answered {code}: {messages.get(name)}"
        assert seconds < HOSTILE_TIMEOUT_S, f"{name}: took {seconds:.1f}s"
    assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"
    assert answers["50 MB body"][0] == 413
    assert len(outcomes) > 5 and set(outcomes) == {200}, sorted(set(outcomes))
    assert process.alive() and http_status(url + "/readyz") == 200
