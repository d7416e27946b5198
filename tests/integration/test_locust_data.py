"""The swarm of `flts run` replays a station's test split as preprocess repaired it, not its raw CSV.

A station whose CSVs have NaNs, duplicate and unsorted timestamps and gaps goes through the real
preprocess job (real broker and S3 server); `write_test_splits` turns the processed test split back
into a CSV in original units, and the Locust file builds a request from every window of it, where
the raw CSV gives it none.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from flts_cli.locust_cmd import write_test_splits
from flts_cli.stack import StackConfig
from preprocess_container.preprocessing import clean_split, read_raw_csv
from shared.columns import KPI_COLUMNS, TIME_COLUMN
from shared.events import DataClaim
from shared.kafka import ensure_topics
from shared.storage import ObjectStore
from tests.helpers.topics import read_topic

REPO_ROOT = Path(__file__).resolve().parents[2]
WINDOW = 10  # LOCUST_INPUT_ROWS' default, INPUT_SEQ_LEN
HOLE_EVERY = 7  # rows: fewer than WINDOW, so no run of WINDOW rows of the file is complete


def messy(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """`frame` with the dirt preprocess repairs: a hole in `down` every HOLE_EVERY rows and 3 % of
    the other cells empty, a 12-minute gap, 8 duplicated timestamps with other values, and every
    row out of order."""
    rng = np.random.default_rng(seed)
    out = frame.reset_index(drop=True)
    out.loc[out.index % HOLE_EVERY == 3, "down"] = np.nan
    others = [name for name in KPI_COLUMNS if name != "down"]
    cells = out[others].to_numpy(dtype=np.float64)
    cells[rng.random(cells.shape) < 0.03] = np.nan
    out[others] = cells
    middle = len(out) // 2
    out = out.drop(out.index[middle : middle + 6])
    duplicates = out.iloc[rng.choice(len(out), size=8, replace=False)].copy()
    duplicates["up"] = duplicates["up"] * 1.1
    return pd.concat([out, duplicates]).sample(frac=1.0, random_state=seed)


def messy_station(directory: Path, train_rows: int = 400, test_rows: int = 200) -> str:
    """Write `<name>.csv` and `<name>_test.csv`, messy samples of PobleSec, in `directory`."""
    name = f"Messy{uuid.uuid4().hex[:6]}"
    directory.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(REPO_ROOT / "data" / "PobleSec.csv", nrows=train_rows)
    test = pd.read_csv(REPO_ROOT / "data" / "PobleSec_test.csv", nrows=test_rows)
    messy(train, 1).to_csv(directory / f"{name}.csv", index=False)
    messy(test, 2).to_csv(directory / f"{name}_test.csv", index=False)
    return name


LOAD_BODIES = """
import sys
sys.path.insert(0, sys.argv[1])
try:
    import locustfile
except ValueError as exc:
    print("refused:", exc)
else:
    print("windows:", {name: len(bodies) for name, bodies in locustfile.BODIES.items()})
"""


def locust_windows(dataset: str, folder: Path) -> str:
    """What the Locust file makes of `<dataset>_test.csv` in `folder`, in a child process: importing
    Locust monkey-patches the whole interpreter (gevent)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LOCUST_DATASETS": dataset}
    env.update({"LOCUST_DATA_DIR": str(folder), "LOCUST_DATA_PATH": "", "LOCUST_INPUT_ROWS": str(WINDOW)})
    done = subprocess.run(
        [sys.executable, "-c", LOAD_BODIES, str(REPO_ROOT / "locust")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_repaired_test_split_of_a_messy_station_gives_locust_every_window_the_raw_csv_gives_none(
    service_env: dict[str, str],
    stack: StackConfig,
    object_store: ObjectStore,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    dataset = messy_station(raw)
    sampled_test_rows = 120
    names = {
        "BUCKET_DATASET": unique_name("dataset"),
        "BUCKET_PROCESSED": unique_name("processed"),
        "TOPIC_TRAINING_DATA": unique_name("training-data"),
        "TOPIC_INFERENCE_DATA": unique_name("inference-data"),
    }
    ensure_topics(stack.kafka_bootstrap, [names["TOPIC_TRAINING_DATA"], names["TOPIC_INFERENCE_DATA"]])
    env = {**service_env, **names, "DATASET_NAME": dataset, "DATA_DIR": str(raw)}
    env["SAMPLE_TEST_ROWS"] = str(sampled_test_rows)
    job = subprocess.run(
        [sys.executable, "-m", "preprocess_container"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    [(_key, value)] = read_topic(stack.kafka_bootstrap, names["TOPIC_TRAINING_DATA"])
    claim = DataClaim.model_validate(value)
    meta = object_store.get_json(claim.bucket, claim.meta_object)
    repairs = meta["repairs"]["test"]
    assert repairs["nan_cells"] and repairs["duplicate_timestamps"] == 8 and repairs["unsorted_rows"]
    assert repairs["grid_gaps"] == 1

    folder = write_test_splits(object_store, {dataset: claim}, tmp_path / "splits")

    written = pd.read_csv(folder / f"{dataset}_test.csv", parse_dates=[TIME_COLUMN])
    assert list(written.columns) == [TIME_COLUMN, *KPI_COLUMNS]
    # The split the claim's config hash names: sampled (head) as the job was told, on the grid.
    assert len(written) == claim.test_rows == sampled_test_rows
    assert (written[TIME_COLUMN].diff().dropna() == pd.Timedelta(minutes=2)).all()
    assert written[list(KPI_COLUMNS)].notna().all().all()
    # In the units a client sends: the repaired raw values, not the scaled ones in the Parquet.
    repaired, _report = clean_split(read_raw_csv((raw / f"{dataset}_test.csv").read_bytes(), "test"), "test")
    expected = repaired.iloc[:sampled_test_rows]
    assert (written[TIME_COLUMN].to_numpy() == expected.index.to_numpy()).all()
    np.testing.assert_allclose(written[list(KPI_COLUMNS)].to_numpy(), expected.to_numpy(), rtol=1e-9)

    # What the swarm makes of each: the raw CSV is what `flts run` used to replay.
    assert locust_windows(dataset, raw) == f"refused: no complete window of {WINDOW} rows in {dataset}'s data"
    every_window = sampled_test_rows - WINDOW + 1
    assert locust_windows(dataset, folder) == f"windows: {{'{dataset}': {every_window}}}"
