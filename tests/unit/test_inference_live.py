"""`flts run`'s inference_live stage gives up on a station at once when the promoted run lacks its
model files (looked at as soon as inference reports a failed load), naming them, instead of
waiting out its timeout; a failed load of a run whose files are there is waited out.

Inference is played by a local HTTP server that answers `GET /model` with a fixed body of the
shape inference_container/routes/model.py serves.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flts_cli import stages
from flts_cli.settings import RunnerSettings
from flts_cli.stages import inference_live, load_failures
from flts_cli.state import RunOptions, RunState, Stage, StageError
from shared.events import DataClaim, PromotionPointer
from shared.scoring import DEFAULT_WEIGHTS


class ModelEndpoint:
    """Answers `GET /model` with `body` (changeable while it runs)."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"status": "loading", "models": {}, "failed": {}}
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = json.dumps(endpoint.body).encode()
                self.send_response(200 if self.path == "/model" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def inference() -> Iterator[ModelEndpoint]:
    endpoint = ModelEndpoint()
    endpoint.thread.start()
    try:
        yield endpoint
    finally:
        endpoint.server.shutdown()
        endpoint.server.server_close()


def pointer(station: str) -> PromotionPointer:
    return PromotionPointer.model_validate(
        {
            "identifier": station,
            "config_hash": hashlib.sha256(station.encode()).hexdigest(),
            "model_type": "GRU",
            "run_id": f"run-{station}",
            "model_uri": f"runs:/run-{station}/GRU",
            "experiment": "Default",
            "rmse": 0.04,
            "mae": 0.02,
            "mse": 0.002,
            "score": 0.03,
            "weights": DEFAULT_WEIGHTS,
            "scoreboard": [],
        }
    )


def promoted_run(tmp_path: Path, url: str, *stations: str) -> RunState:
    """A run past its evaluation: every station promoted, inference at `url`."""
    options = RunOptions(
        datasets=stations,
        sample_train_rows=400,
        sample_test_rows=200,
        salt="",
        epochs=1,
        model_types=("GRU",),
        load_users=10,
        load_spawn_rate=10.0,
        load_duration="20s",
        keep_running=False,
        no_skill_gate=False,
        stage_timeout=900.0,
    )
    run = RunState(options, RunnerSettings(), tmp_path)
    run.inference_url = url
    # Unreachable on purpose: tests that reach the file check replace it.
    run.env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    run.triggered_at = time.monotonic()
    for name in stations:
        station = run.stations[name]
        station.claim = DataClaim.model_validate(
            {
                "identifier": name,
                "dataset": name,
                "config_hash": hashlib.sha256(name.encode()).hexdigest(),
                "bucket": "processed-data",
                "object": "x/train.parquet",
                "test_object": "x/test.parquet",
                "meta_object": "x/meta.json",
                "size": 1,
                "rows": 400,
                "test_rows": 200,
            }
        )
        station.pointer = pointer(name)
    return run


def failure(run_id: str, error: str) -> dict[str, str]:
    return {"run_id": run_id, "error": error, "at": "2026-12-01T12:00:00+00:00"}


LOAD_ERROR = "OSError: No such file or directory: '/tmp/model/GRU/artifacts/model/state_dict.pt'"


def test_load_failures_reads_each_station_s_failed_run_and_its_reason() -> None:
    body = {
        "models": {"LesCorts": {"run_id": "r-l"}},
        "failed": {
            "PobleSec": failure("r-p", "boom"),
            "ElBorn": {"run_id": "r-e", "reason": "its files are gone", "error": "OSError"},
            "Broken": {"error": "no run named"},
            "Odd": "not an object",
        },
    }
    assert load_failures(body) == {"PobleSec": ("r-p", "boom"), "ElBorn": ("r-e", "its files are gone")}
    assert load_failures({"status": "loading"}) == {}
    assert load_failures(None) == {}


MISSING = "run run-PobleSec lacks GRU/artifacts/model/state_dict.pt"


def test_a_reported_load_failure_of_a_run_without_its_files_fails_the_stage_at_once_naming_them(
    inference: ModelEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inference.body["failed"] = {"PobleSec": failure("run-PobleSec", LOAD_ERROR)}
    monkeypatch.setattr(stages, "connect", lambda _uri: object())
    monkeypatch.setattr(stages, "_model_files_problem", lambda _client, _pointer: MISSING)
    run = promoted_run(tmp_path, inference.url, "PobleSec")

    began = time.monotonic()
    with pytest.raises(StageError) as failed:
        inference_live(run, Stage("inference_live"))

    # The reported failure has the files looked at before the check would otherwise be due.
    assert time.monotonic() - began < stages.ARTIFACT_CHECK_AFTER_S
    assert str(failed.value) == MISSING
    assert run.stations["PobleSec"].failed is not None


def test_a_reported_load_failure_of_a_run_with_its_files_is_waited_out_until_inference_serves_it(
    inference: ModelEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An MLflow blip: inference retries the load, and the stage must not give up on it.
    inference.body["failed"] = {"PobleSec": failure("run-PobleSec", LOAD_ERROR)}
    looked: list[str] = []

    def files_complete(_client: object, pointer: PromotionPointer) -> None:
        looked.append(pointer.run_id)
        return None

    monkeypatch.setattr(stages, "connect", lambda _uri: object())
    monkeypatch.setattr(stages, "_model_files_problem", files_complete)
    run = promoted_run(tmp_path, inference.url, "PobleSec")

    def heal() -> None:
        time.sleep(1.0)
        inference.body = {"status": "ok", "models": {"PobleSec": {"run_id": "run-PobleSec"}}, "failed": {}}

    threading.Thread(target=heal, daemon=True).start()
    assert inference_live(run, Stage("inference_live")) == "ok"
    assert looked == ["run-PobleSec"]
    assert run.stations["PobleSec"].failed is None


def test_a_failure_of_an_earlier_run_does_not_hold_back_the_promoted_one(
    inference: ModelEndpoint, tmp_path: Path
) -> None:
    # The station's previous champion failed to load; the promoted run is served.
    inference.body["models"] = {"PobleSec": {"run_id": "run-PobleSec"}}
    inference.body["failed"] = {"PobleSec": failure("run-older", LOAD_ERROR)}
    run = promoted_run(tmp_path, inference.url, "PobleSec")
    stage = Stage("inference_live")

    assert inference_live(run, stage) == "ok"
    assert run.stations["PobleSec"].failed is None
    assert stage.detail["trigger_to_live_seconds"] >= 0


def test_one_station_failing_to_load_leaves_the_others_live(
    inference: ModelEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inference.body["models"] = {"LesCorts": {"run_id": "run-LesCorts"}}
    inference.body["failed"] = {"PobleSec": failure("run-PobleSec", LOAD_ERROR)}
    monkeypatch.setattr(stages, "connect", lambda _uri: object())
    monkeypatch.setattr(
        stages, "_model_files_problem", lambda _client, p: MISSING if p.identifier == "PobleSec" else None
    )
    run = promoted_run(tmp_path, inference.url, "PobleSec", "LesCorts")
    stage = Stage("inference_live")

    assert inference_live(run, stage) == "partial"
    poblesec = run.stations["PobleSec"].failed
    assert poblesec is not None and poblesec.stage == "inference_live" and MISSING in poblesec.message
    assert stage.detail["stations"]["PobleSec"]["error"] == poblesec.message
    lescorts = run.stations["LesCorts"]
    assert lescorts.failed is None
    assert lescorts.trigger_to_live_seconds is not None and lescorts.trigger_to_live_seconds >= 0
