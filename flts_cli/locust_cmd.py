"""The Locust command line: the headless swarm of the load_test stage and the web UI of
`--keep-running` differ only in their options."""

from __future__ import annotations

from pathlib import Path

from flts_cli import REPO_ROOT
from flts_cli.fleet import data_dir
from flts_cli.stack import HOST, venv_bin

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


def data_env(datasets: list[str]) -> dict[str, str]:
    """Locust replays the test splits of the stations the run serves, from the data folder the
    preprocess job read; a LOCUST_DATA_PATH inherited from the shell would replace them."""
    return {"LOCUST_DATASETS": ",".join(datasets), "LOCUST_DATA_DIR": str(data_dir()), "LOCUST_DATA_PATH": ""}


def _locust(host: str, *options: str) -> list[str]:
    return [venv_bin("locust"), "-f", str(LOCUSTFILE), "--host", host, *options]
