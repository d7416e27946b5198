"""Hostile data through the real preprocess job, then a real trainer on whatever it produced.

The dataset carries every fault at once: a constant column, 30 % NaN, duplicated and unsorted
timestamps, a 3-hour gap, and values of 1e300. The pipeline must complete or refuse with an error
that names the problem; a process that dies and would be restarted into the same fault (a crash
loop) fails the test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from flts_cli.stack import StackConfig
from preprocess_container.job import EXIT_OK, EXIT_REFUSED
from shared.data import KPI_COLUMNS
from shared.events import DataClaim, dlq_topic
from shared.kafka import ensure_topics
from shared.storage import ObjectStore
from tests.helpers.processes import REPO_ROOT, ServiceProcess
from tests.helpers.topics import read_topic
from tests.helpers.waiting import wait_until
from tests.reliability.conftest import run_preprocess, trainer_env
from tests.reliability.support import unique

GAP_ROWS = 90  # 3 hours of 2-minute steps


def hostile(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["mcs_up_var"] = 3.0  # a constant column
    kpis = out[list(KPI_COLUMNS)].to_numpy()
    kpis[rng.random(kpis.shape) < 0.30] = np.nan  # 30 % NaN
    out[list(KPI_COLUMNS)] = kpis
    out.iloc[len(out) // 3, out.columns.get_loc("down")] = 1e300
    out.iloc[2 * len(out) // 3, out.columns.get_loc("up")] = -1e300
    middle = len(out) // 2
    out = pd.concat([out.iloc[:middle], out.iloc[middle + GAP_ROWS :]])  # a 3-hour gap
    duplicates = out.sample(n=25, random_state=seed)
    out = pd.concat([out, duplicates])  # duplicated timestamps (with different values below)
    out.iloc[-25:, out.columns.get_loc("down")] = out.iloc[-25:]["down"].to_numpy() * 1.5
    return out.sample(frac=1.0, random_state=seed)  # unsorted


def to_csv(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def test_hostile_dataset_completes_or_is_refused_by_name_and_the_trainer_never_crash_loops(
    stack: StackConfig, service_env: dict[str, str], object_store: ObjectStore, tmp_path: Path
) -> None:
    train = pd.read_csv(REPO_ROOT / "data" / "PobleSec.csv").iloc[:1500]
    test = pd.read_csv(REPO_ROOT / "data" / "PobleSec_test.csv").iloc[:400]
    bucket = unique("dataset")
    object_store.ensure_bucket(bucket)
    object_store.put_bytes(bucket, "Hostile.csv", to_csv(hostile(train, 1)))
    object_store.put_bytes(bucket, "Hostile_test.csv", to_csv(hostile(test, 2)))
    training, inference = unique("training-data"), unique("inference-data")
    ensure_topics(stack.kafka_bootstrap, [training, inference, dlq_topic(training), dlq_topic(inference)])
    env = {
        **service_env,
        "DATASET_NAME": "Hostile",
        "BUCKET_DATASET": bucket,
        "BUCKET_PROCESSED": unique("processed"),
        "TOPIC_TRAINING_DATA": training,
        "TOPIC_INFERENCE_DATA": inference,
        "DATA_DIR": str(tmp_path),  # nothing to upload from: the bucket is the only source
        "LOG_LEVEL": "INFO",
    }
    first = run_preprocess(env)
    second = run_preprocess(env)
    print(f"preprocess exit codes: {first.returncode}, {second.returncode}")
    # The same input gives the same verdict: no flapping, and a refusal is not retried as infra trouble
    # (3) nor taken for a crash (1), both of which the Job retries.
    assert first.returncode == second.returncode
    assert first.returncode in (EXIT_OK, EXIT_REFUSED), first.stderr[-3000:]
    if first.returncode == EXIT_REFUSED:
        letters = [v for _k, v in read_topic(stack.kafka_bootstrap, dlq_topic(training))]
        assert letters and all(letter["error"] for letter in letters), letters
        print(f"refused: {letters[0]['error']}")
        return

    claims = [DataClaim.model_validate(v) for _k, v in read_topic(stack.kafka_bootstrap, training)]
    assert claims and len({c.config_hash for c in claims}) == 1
    meta = object_store.get_json(env["BUCKET_PROCESSED"], claims[0].meta_object)
    print(f"processed; repairs: {json.dumps(meta.get('repairs'))[:500]}")
    processed = pd.read_parquet(io.BytesIO(object_store.get_bytes(env["BUCKET_PROCESSED"], claims[0].object)))
    assert np.isfinite(processed.to_numpy()).all()
    assert processed.index.is_monotonic_increasing and not processed.index.has_duplicates
    # The 1e300 readings are repaired away, not made the scaler's maximum (which would squash every
    # real value of `down` and `up` to ~0 and train the model on a flat line).
    assert meta["repairs"]["train"]["implausible_cells"] >= 2
    assert processed["down"].std() > 0.05 and processed["up"].std() > 0.05

    trainer_settings = trainer_env(service_env, training)
    ensure_topics(stack.kafka_bootstrap, [trainer_settings["TOPIC_MODEL_TRAINING"]])
    trainer = ServiceProcess("train_container", trainer_settings, tmp_path / "trainer.log").start()
    try:

        def finished() -> list[dict[str, object]]:
            assert trainer.alive(), f"the trainer died on hostile data: {trainer.tail()}"
            return [
                v
                for _k, v in read_topic(stack.kafka_bootstrap, trainer_settings["TOPIC_MODEL_TRAINING"])
                if v.get("status") in ("SUCCESS", "FAILED")
            ]

        # Both runs of the job published the claim (same hash); the trainer answers each once.
        wait_until(
            lambda: len(finished()) >= len(claims), 150, "the trainer to answer every claim", interval_s=1.0
        )
        outcome = finished()
        print(f"trainer: {[(e['status'], e.get('error')) for e in outcome]}")
        assert len(outcome) == len(claims) and len({e["status"] for e in outcome}) == 1
        if outcome[0]["status"] == "FAILED":
            assert outcome[0]["error"]
            assert read_topic(stack.kafka_bootstrap, dlq_topic(training))
        assert trainer.alive()
    finally:
        code = trainer.stop()
    assert code == 0, trainer.tail()
