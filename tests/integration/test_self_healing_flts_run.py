"""`flts run` names a promoted run's missing model file instead of waiting out its timeout.

The inference_live stage against the session's real MLflow and S3 servers, with a pointer to a run
whose weights were deleted from the object store while MLflow still lists the run. Nothing serves
it (no inference answers), so only the check of the run's files can end the wait early: the stage
gives up naming the file. A run with every file in place is waited for as before.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flts_cli import stages
from flts_cli.settings import RunnerSettings
from flts_cli.stack import StackConfig, free_port
from flts_cli.stages import inference_live
from flts_cli.state import RunOptions, RunState, Stage, StageError
from shared.events import ModelType, PromotionPointer
from shared.mlflow_utils import ensure_experiment, experiment_for, missing_model_artifacts
from shared.scoring import DEFAULT_WEIGHTS
from shared.storage import ObjectStore
from tests.integration.test_evaluator import log_model_files
from tests.integration.test_self_healing import delete_artifacts

STATION = "PobleSec"


def finished_run(client: MlflowClient) -> str:
    """A FINISHED GRU run with every model file a trainer leaves."""
    experiment_id = ensure_experiment(client, experiment_for("GRU"))
    run_id: str = client.create_run(experiment_id, run_name="GRU").info.run_id
    log_model_files(client, run_id, ModelType.GRU)
    client.set_terminated(run_id)
    return run_id


def promoted(tmp_path: Path, stack: StackConfig, run_id: str) -> RunState:
    """A one-station `flts run` past its evaluation, promoted to `run_id`; nothing serves it."""
    options = RunOptions(
        datasets=(STATION,),
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
    run.env = stack.service_env()
    run.inference_url = f"http://127.0.0.1:{free_port()}"
    run.triggered_at = time.monotonic()
    run.stations[STATION].pointer = PromotionPointer.model_validate(
        {
            "identifier": STATION,
            "config_hash": uuid.uuid4().hex + uuid.uuid4().hex,
            "model_type": "GRU",
            "run_id": run_id,
            "model_uri": f"runs:/{run_id}/GRU",
            "experiment": "Default",
            "rmse": 0.04,
            "mae": 0.02,
            "mse": 0.002,
            "score": 0.03,
            "weights": DEFAULT_WEIGHTS,
            "scoreboard": [],
        }
    )
    return run


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_a_promoted_run_whose_weights_are_gone_fails_the_stage_naming_the_file(
    stack: StackConfig, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = MlflowClient(stack.mlflow_url)
    run_id = finished_run(client)
    assert len(delete_artifacts(object_store, run_id, "/state_dict.pt")) == 1
    run = promoted(tmp_path, stack, run_id)

    with pytest.raises(StageError) as failed:
        inference_live(run, Stage("inference_live"))

    # Not the timeout's "did not serve ... within" message: the file check ended the wait.
    message = str(failed.value)
    assert message.startswith(f"run {run_id} lacks its model artifacts GRU/artifacts/model/state_dict.pt")
    assert "did not serve" not in message
    station = run.stations[STATION]
    assert station.failed is not None and station.failed.stage == "inference_live"
    assert station.trigger_to_live_seconds is None


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_a_promoted_run_with_its_files_in_place_is_waited_for_until_the_timeout(
    stack: StackConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(stack.mlflow_url)
    run_id = finished_run(client)
    assert missing_model_artifacts(client, run_id, "GRU") == []
    monkeypatch.setattr(stages, "ARTIFACT_CHECK_AFTER_S", 0.5)
    monkeypatch.setattr(stages, "MODEL_LIVE_S", 4.0)
    run = promoted(tmp_path, stack, run_id)

    with pytest.raises(StageError, match=f"inference did not serve run {run_id} for {STATION} within 4s"):
        inference_live(run, Stage("inference_live"))
