"""The Locust command line: the headless swarm of the load_test stage and the web UI of
`--keep-running` differ only in their options, and replay the same data: each station's test split
as the preprocess job repaired it (see `write_test_splits`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flts_cli import REPO_ROOT
from flts_cli.stack import HOST, venv_bin
from flts_cli.state import RunState, need
from shared.columns import KPI_COLUMNS, TIME_COLUMN
from shared.events import DataClaim
from shared.processed import load_meta
from shared.storage import ObjectStore

# Under the run's report folder: what the swarm replayed stays beside its results.
TEST_SPLITS_FOLDER = "locust-data"

LOCUSTFILE = REPO_ROOT / "locust" / "locustfile.py"


def headless_command(host: str, users: int, spawn_rate: float, duration: str, results: Path) -> list[str]:
    """A swarm that ends by itself; `results` is the prefix of its CSV and final JSON stats."""
    return _locust(
        host,
        "--headless",
        *("-u", str(users), "-r", str(spawn_rate), "-t", duration),
        *("--csv", str(results), "--csv-full-history", "--json-file", str(results)),
        *("--only-summary", "--exit-code-on-error", "1"),
    )


def web_command(host: str, port: int) -> list[str]:
    """The web UI on `port`, idle until someone starts a swarm from it."""
    return _locust(host, "--web-host", HOST, "--web-port", str(port))


def data_env(datasets: list[str], folder: Path) -> dict[str, str]:
    """Locust replays the `<dataset>_test.csv` of `datasets` from `folder`, the repaired splits
    `repaired_test_splits` wrote (the raw CSVs would do for clean stations only: Locust skips
    windows with a hole or a gap, and a messy station may have none left). A LOCUST_DATA_PATH
    inherited from the shell would replace them."""
    return {
        "LOCUST_DATASETS": ",".join(datasets),
        "LOCUST_DATA_DIR": str(folder),
        "LOCUST_DATA_PATH": "",
    }


def repaired_test_splits(run: RunState) -> Path:
    """Write the test split of every station still in the run, as preprocess repaired it for the
    config hash the run trained and promoted, into the run's folder; returns the folder."""
    store = need(run.store, "the object store")
    claims = {station.dataset: need(station.claim, "the data claim") for station in run.active()}
    return write_test_splits(store, claims, run.report_dir / TEST_SPLITS_FOLDER)


def write_test_splits(store: ObjectStore, claims: Mapping[str, DataClaim], folder: Path) -> Path:
    """Write `<dataset>_test.csv` (`time` and the 11 KPIs in their original units) in `folder` for
    each dataset's claim, from the processed test split in the object store; returns `folder`.

    The swarm must send windows the service accepts, and the service accepts what preprocess
    produces: NaNs filled, duplicates merged, rows sorted, gaps filled, on the 2-minute grid, and
    sampled as the claim's config hash says. The raw CSV of a messy station may hold no complete
    window at all. The split is stored scaled; the scaler in meta.json turns it back into the units
    a client sends. Locust reads the CSV with the standard library only (no pandas in its image).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for dataset, claim in claims.items():
        meta = load_meta(store, claim.bucket, claim.meta_object)
        split = store.get_parquet(claim.bucket, claim.test_object)
        kpis = meta.scaler.inverse_transform(split.loc[:, list(KPI_COLUMNS)])
        kpis.index = kpis.index.strftime("%Y-%m-%d %H:%M:%S")
        kpis.to_csv(folder / f"{dataset}_test.csv", index_label=TIME_COLUMN)
    return folder


def _locust(host: str, *options: str) -> list[str]:
    return [venv_bin("locust"), "-f", str(LOCUSTFILE), "--host", host, *options]
