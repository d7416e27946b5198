"""`flts run` on a station with repairable dirt in its CSVs completes, load test included.

The station's CSVs have NaNs (one in every 7 rows of `down`), duplicate and unsorted timestamps and
a gap: preprocess repairs them, and the swarm replays the repaired test split, since the raw one has
no window of 10 complete consecutive rows to send.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from shared.columns import KPI_COLUMNS, TIME_COLUMN
from tests.e2e.test_flts_run import STACK_VARIABLES, assert_no_service_left, flts_run
from tests.integration.test_locust_data import WINDOW, messy_station

STEP = pd.Timedelta(minutes=2)


def complete_windows(csv: Path) -> int:
    """Windows of WINDOW consecutive rows of the file, in its order, with no hole or gap."""
    frame = pd.read_csv(csv, parse_dates=[TIME_COLUMN])
    complete = frame[list(KPI_COLUMNS)].notna().all(axis=1).to_numpy()
    steps = (frame[TIME_COLUMN].diff() == STEP).to_numpy()
    return sum(
        complete[start : start + WINDOW].all() and steps[start + 1 : start + WINDOW].all()
        for start in range(len(frame) - WINDOW + 1)
    )


def test_a_messy_station_is_trained_promoted_and_load_tested_with_zero_failures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dataset = messy_station(data)
    assert complete_windows(data / f"{dataset}_test.csv") == 0  # what the swarm used to replay
    # Its own embedded stack: a consumer group member left behind on the session's broker by an
    # earlier run can hold the trainer's partitions for minutes (the broker keeps stale members).
    env = {k: v for k, v in os.environ.items() if not k.startswith(STACK_VARIABLES)}
    env["DATA_DIR"] = str(data)
    # One model type, one epoch, no skill gate (a model trained this briefly need not beat
    # persistence) and the shortest swarm that surely starts (see test_flts_run): the point is
    # the load test, within the e2e tier's budget.
    options = ["--dataset", dataset, "--model-types", "GRU", "--epochs", "1", "--no-skill-gate"]
    options += ["--load-duration", "6s", "--load-users", "2"]

    report = flts_run(tmp_path / "report", env, *options)

    assert report["status"] == "ok", report.get("error")
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    assert report["promoted"]["model_type"] == "GRU"
    load = report["load_test"]
    assert (load["stations"], load["failures"]) == ([dataset], 0)
    assert load["requests"] > 0
    # The swarm replayed the repaired split, every row of it on the grid, beside the run's report.
    replayed = tmp_path / "report" / "locust-data" / f"{dataset}_test.csv"
    assert complete_windows(replayed) == report["rows"]["test"] - WINDOW + 1
    assert_no_service_left(report)
