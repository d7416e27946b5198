"""Where the batch forecaster keeps things in its bucket (DESIGN.md, object layout).

Apart from the forecast itself so that `flts run` can find a batch without importing the model
runtime.
"""

from __future__ import annotations

from typing import Final

PARQUET: Final = ".parquet"
RECORD: Final = ".json"
LATEST_CLAIM: Final = "latest-claim.json"


def forecast_key(identifier: str, config_hash: str, run_id: str) -> str:
    """Where the batch forecast of `config_hash`'s split by run `run_id` lives in the bucket."""
    return f"{identifier}/{config_hash}/{run_id}{PARQUET}"


def record_key(identifier: str, config_hash: str, run_id: str) -> str:
    """The published event of that batch: written last, so its presence means "done"."""
    return f"{identifier}/{config_hash}/{run_id}{RECORD}"


def latest_claim_key(identifier: str) -> str:
    """The station's latest claim: what a new champion forecasts again."""
    return f"{identifier}/{LATEST_CLAIM}"
