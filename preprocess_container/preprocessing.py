"""Raw CSV to the processed-data contract: counted repairs, the train-fit scaler, sampling, the config hash.

Pure logic (no object store, no Kafka): the preprocess job and `bench/accuracy.py` both call
`prepare_splits`, so training always sees data prepared by the same code path.

    train_raw = read_raw_csv(Path("data/PobleSec.csv").read_bytes(), "train")
    test_raw = read_raw_csv(Path("data/PobleSec_test.csv").read_bytes(), "test")
    prepared = prepare_splits(train_raw, test_raw, PreprocessOptions())
    prepared.train, prepared.test   # DESIGN.md layout: index `time`, FEATURE_COLUMNS, KPIs scaled
    prepared.scaler                 # MinMaxScaler fitted on the cleaned train split
    prepared.repairs                # {"train": {...}, "test": {...}, "scaler": {...}}

Order of work, per split: parse, clean and repair (below); then the scaler is fitted on the whole
cleaned train split; then each split is sampled; then the KPIs are scaled and the six time features
added. Fitting before sampling keeps the scaler of a sampled run equal to the full run's, so sampled
rows always lie inside [0, 1] and models trained on a sample score in the same units.

Repairs (each counted in the split's report):
- columns other than `time` and the 11 KPIs are ignored and listed (`ignored_columns`);
- KPI cells that are not numbers or are infinite become missing (`non_numeric_cells`, `infinite_cells`);
- finite KPI cells beyond +-MAX_ABS_KPI become missing too (`implausible_cells`): one 1e300 would
  otherwise become the scaler's maximum and squash every real value of its column to ~0;
- rows with every KPI missing are dropped (`rows_all_kpis_missing`); inside the series their grid slot
  is re-created and filled like any gap, at either end the series simply starts/ends later;
- unsorted rows are sorted, stably (`unsorted_rows` = rows earlier than their predecessor);
- timestamps off the 2-minute grid anchored at the first timestamp are rounded onto it
  (`off_grid_timestamps`);
- rows sharing a timestamp are merged into their column-wise mean, missing cells ignored
  (`duplicate_timestamps` = rows removed);
- missing grid slots are inserted (`grid_gaps`, `grid_slots_inserted`, `longest_gap_steps`);
- missing cells (NaN in the file, `nan_cells`, plus inserted slots) are interpolated linearly in time,
  then forward/back filled at the ends (`cells_filled`). A stretch of more than `max_gap_steps`
  consecutive missing steps in any KPI is refused: interpolating a straight line across it would
  invent traffic a window model then learns from. The default, 720 steps (24 h), accepts every shipped
  file (the longest, LesCorts, has 195 missing steps in a row).
The scaler report lists constant columns (range 0, or below 1e-12 of the column's magnitude: scaled
with range 1, so they map to ~0 and stay finite) and near-constant ones (below 1e-6: scaled normally,
reported because their scaled values amplify noise).

Refusals raise `DataProblem` with a message naming the split and the problem: no `time` column or a
value that is not an ISO-8601 timestamp, a missing KPI column, a KPI column without any number, an
unreadable CSV, a gap longer than `max_gap_steps`, fewer rows than one window after sampling.

Sampling keeps time order. `head` and `tail` take the first or last N rows. `random` takes one
contiguous block of N rows whose start is drawn with the seed (a separate stream per split): a window
model needs consecutive 2-minute rows, and scattered rows would break both the grid contract and
every window that spans them.

The config hash is SHA-256 of the canonical JSON (sorted keys, no spaces) of
`{"config": ..., "extra_hash_salt": ..., "source_digests": ...}`; `hash_config` builds the config part
from the dataset name and the options (including PREPROCESS_VERSION, bumped whenever this module
starts producing different output for the same inputs).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, TIME_COLUMN, MinMaxScaler, time_features

PREPROCESS_VERSION = 2
SAMPLE_STRATEGIES: tuple[str, ...] = ("head", "tail", "random")
DEFAULT_MAX_GAP_STEPS = 720
CONSTANT_RELATIVE_SPAN = 1e-12
NEAR_CONSTANT_RELATIVE_SPAN = 1e-6
# Far above anything a cell reports in two minutes (a 1 Gbit/s cell moves ~1.5e10 bytes), far below
# the values that wreck min-max scaling; a cell beyond it is a corrupt reading, not traffic.
MAX_ABS_KPI = 1e15
STEP_SECONDS = int(STEP.total_seconds())


class DataProblem(ValueError):
    """The data cannot be processed as configured; the message says what and where."""


@dataclass(frozen=True)
class PreprocessOptions:
    """Everything besides the raw bytes that decides the processed data.

    `sample_*_rows` None means every row. `sample_seed` only matters for the `random` strategy.
    `input_seq_len + output_seq_len` is the fewest rows a split may keep (one training window).
    """

    input_seq_len: int = 10
    output_seq_len: int = 1
    sample_train_rows: int | None = None
    sample_test_rows: int | None = None
    sample_strategy: str = "head"
    sample_seed: int = 0
    max_gap_steps: int = DEFAULT_MAX_GAP_STEPS

    def __post_init__(self) -> None:
        if self.input_seq_len < 1 or self.output_seq_len < 1:
            raise ValueError("input_seq_len and output_seq_len must be at least 1")
        for name in ("sample_train_rows", "sample_test_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None")
        if self.sample_strategy not in SAMPLE_STRATEGIES:
            raise ValueError(f"sample_strategy must be one of {', '.join(SAMPLE_STRATEGIES)}")
        if self.sample_seed < 0:
            raise ValueError("sample_seed must be non-negative")
        if self.max_gap_steps < 0:
            raise ValueError("max_gap_steps must be non-negative")

    @property
    def min_rows(self) -> int:
        """Rows in one training window: fewer and no window can be built."""
        return self.input_seq_len + self.output_seq_len

    def to_config(self) -> dict[str, Any]:
        """The options as plain JSON values, grouped as meta.json shows them."""
        return {
            "preprocess_version": PREPROCESS_VERSION,
            "preprocess": {
                "input_seq_len": self.input_seq_len,
                "output_seq_len": self.output_seq_len,
                "max_gap_steps": self.max_gap_steps,
                "step_seconds": STEP_SECONDS,
            },
            "sampling": {
                "train_rows": self.sample_train_rows,
                "test_rows": self.sample_test_rows,
                "strategy": self.sample_strategy,
                # The seed changes nothing unless the strategy is random; leaving it out otherwise
                # avoids reprocessing identical data under a new hash.
                "seed": self.sample_seed if self.sample_strategy == "random" else None,
            },
        }


@dataclass(frozen=True)
class PreparedData:
    """Both splits in the processed-data layout, the scaler fitted on train, and what was done."""

    train: pd.DataFrame
    test: pd.DataFrame
    scaler: MinMaxScaler
    repairs: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)


# --- the config hash ---------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, no NaN: equal values always give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hash_config(dataset: str, options: PreprocessOptions) -> dict[str, Any]:
    """The settings part of the hash input (the salt and the source digests come separately)."""
    return {"dataset": dataset, **options.to_config()}


def config_hash(config: Mapping[str, Any], salt: str, source_digests: Mapping[str, str]) -> str:
    """SHA-256 hex of the canonical JSON of the config, the salt and the sources' content digests."""
    payload = {"config": config, "extra_hash_salt": salt, "source_digests": dict(source_digests)}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


# --- parsing and cleaning ----------------------------------------------------------------------


def read_raw_csv(data: bytes, split: str) -> pd.DataFrame:
    """Parse CSV bytes without interpreting any column; refuse what is not a CSV table."""
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=True, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataProblem(f"{split}: cannot read the CSV: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _parse_times(column: pd.Series, split: str) -> pd.DatetimeIndex:
    text = column.astype("string").str.strip()
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataProblem(
            f"{split}: {int(bad.sum())} of {len(text)} '{TIME_COLUMN}' values are not ISO-8601 timestamps; "
            f"first at data row {first + 1}: {column.iloc[first]!r}"
        )
    # Aware timestamps are converted to UTC; naive ones are taken as UTC already (the contract).
    return pd.DatetimeIndex(parsed.dt.tz_localize(None), name=TIME_COLUMN).as_unit("ns")


def _longest_run(missing: np.ndarray) -> tuple[int, int]:
    """Length and start index of the longest run of True in a 1-D boolean array."""
    if not missing.any():
        return 0, -1
    padded = np.concatenate(([False], missing, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    best = int(np.argmax(lengths))
    return int(lengths[best]), int(starts[best])


def clean_split(
    raw: pd.DataFrame, split: str, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Repair one raw split into the 11 KPI columns on a complete 2-minute grid, without NaN.

    Returns the frame (float64, DatetimeIndex `time`) and a report counting every repair.
    """
    columns = [str(c).strip() for c in raw.columns]
    if TIME_COLUMN not in columns:
        raise DataProblem(f"{split}: no '{TIME_COLUMN}' column (columns: {', '.join(columns) or 'none'})")
    missing_kpis = [c for c in KPI_COLUMNS if c not in columns]
    if missing_kpis:
        raise DataProblem(f"{split}: missing KPI column(s): {', '.join(missing_kpis)}")
    frame = raw.copy()
    frame.columns = columns
    ignored = [c for c in columns if c != TIME_COLUMN and c not in KPI_COLUMNS]
    if frame.empty:
        raise DataProblem(f"{split}: the file has a header but no rows")

    report: dict[str, Any] = {"input_rows": len(frame), "ignored_columns": ignored}
    times = _parse_times(frame[TIME_COLUMN], split)

    raw_kpis = frame.loc[:, list(KPI_COLUMNS)]
    raw_missing = raw_kpis.isna().to_numpy()
    values = raw_kpis.apply(lambda col: pd.to_numeric(col, errors="coerce")).astype(np.float64)
    numbers = values.to_numpy()
    non_numeric = ~raw_missing & np.isnan(numbers)
    infinite = np.isinf(numbers)
    with np.errstate(invalid="ignore"):
        implausible = np.isfinite(numbers) & (np.abs(numbers) > MAX_ABS_KPI)
    numbers = np.where(infinite | implausible, np.nan, numbers)
    report["non_numeric_cells"] = int(non_numeric.sum())
    report["infinite_cells"] = int(infinite.sum())
    report["implausible_cells"] = int(implausible.sum())
    kpis = pd.DataFrame(numbers, index=times, columns=list(KPI_COLUMNS))

    empty_rows = kpis.isna().all(axis=1).to_numpy()
    report["rows_all_kpis_missing"] = int(empty_rows.sum())
    kpis = kpis.loc[~empty_rows]
    if kpis.empty:
        raise DataProblem(f"{split}: no row has any KPI value")
    report["nan_cells"] = int(raw_missing[~empty_rows].sum())
    no_values = [c for c in KPI_COLUMNS if kpis[c].isna().all()]
    if no_values:
        raise DataProblem(f"{split}: KPI column(s) without a single number: {', '.join(no_values)}")

    stamps = kpis.index.asi8
    report["unsorted_rows"] = int((np.diff(stamps) < 0).sum())
    if report["unsorted_rows"]:
        kpis = kpis.sort_index(kind="stable")

    # Anchor the grid at the first timestamp so a series recorded on odd minutes is not shifted.
    first = kpis.index[0]
    steps = np.rint((kpis.index - first) / STEP).astype(np.int64)
    on_grid = pd.DatetimeIndex(first + steps * STEP, name=TIME_COLUMN).as_unit("ns")
    report["off_grid_timestamps"] = int((on_grid != kpis.index).sum())
    kpis.index = on_grid

    duplicates = int(kpis.index.duplicated().sum())
    report["duplicate_timestamps"] = duplicates
    if duplicates:
        kpis = kpis.groupby(level=0, sort=True).mean()
        kpis.index.name = TIME_COLUMN

    step_diffs = np.diff(kpis.index.asi8) // STEP.value
    report["grid_gaps"] = int((step_diffs > 1).sum())
    report["longest_gap_steps"] = int(max(0, (step_diffs - 1).max(initial=0)))
    grid = pd.date_range(kpis.index[0], kpis.index[-1], freq=STEP, name=TIME_COLUMN).as_unit("ns")
    report["grid_slots_inserted"] = len(grid) - len(kpis)
    kpis = kpis.reindex(grid)

    holes = kpis.isna().to_numpy()
    for position, column in enumerate(KPI_COLUMNS):
        length, start = _longest_run(holes[:, position])
        if length > max_gap_steps:
            raise DataProblem(
                f"{split}: column {column} misses {length} consecutive 2-minute steps from "
                f"{grid[start]} on, more than max_gap_steps={max_gap_steps}"
            )
    report["cells_filled"] = int(holes.sum())
    if report["cells_filled"]:
        kpis = kpis.interpolate(method="time", limit_area="inside").ffill().bfill()
    report["output_rows"] = len(kpis)
    return kpis.astype(np.float64), report


# --- scaler, sampling, assembly ----------------------------------------------------------------


def fit_scaler(train: pd.DataFrame) -> tuple[MinMaxScaler, dict[str, Any]]:
    """MinMaxScaler on the cleaned train KPIs; (near-)constant columns keep scaling finite."""
    values = train.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64)
    lo = values.min(axis=0)
    hi = values.max(axis=0)
    span = hi - lo
    magnitude = np.maximum(np.abs(lo), np.abs(hi))
    constant = (span <= 0) | (span <= CONSTANT_RELATIVE_SPAN * magnitude)
    near_constant = ~constant & (span <= NEAR_CONSTANT_RELATIVE_SPAN * magnitude)
    ranges = np.where(constant, 1.0, span)
    scaler = MinMaxScaler(tuple(KPI_COLUMNS), tuple(float(v) for v in lo), tuple(float(v) for v in ranges))
    report = {
        "constant_columns": [c for c, flag in zip(KPI_COLUMNS, constant, strict=True) if flag],
        "near_constant_columns": [c for c, flag in zip(KPI_COLUMNS, near_constant, strict=True) if flag],
    }
    return scaler, report


def sample_rows(
    frame: pd.DataFrame, rows: int | None, strategy: str, seed: int, stream: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep `rows` consecutive rows (all when None or more than available), in time order.

    `stream` separates the random draws of the splits so the test block does not mirror the train one.
    """
    if strategy not in SAMPLE_STRATEGIES:
        raise ValueError(f"unknown sample strategy {strategy!r}")
    available = len(frame)
    if rows is None or rows >= available:
        start = 0
        chosen = frame
    elif strategy == "head":
        start = 0
        chosen = frame.iloc[:rows]
    elif strategy == "tail":
        start = available - rows
        chosen = frame.iloc[start:]
    else:
        start = int(np.random.default_rng([seed, stream]).integers(0, available - rows + 1))
        chosen = frame.iloc[start : start + rows]
    info = {
        "strategy": strategy,
        "requested_rows": rows,
        "available_rows": available,
        "rows": len(chosen),
        "start_row": start,
        "start": chosen.index[0].isoformat() if len(chosen) else None,
        "end": chosen.index[-1].isoformat() if len(chosen) else None,
    }
    return chosen, info


def assemble(kpis: pd.DataFrame, scaler: MinMaxScaler) -> pd.DataFrame:
    """Scaled KPIs followed by the unscaled time features, in FEATURE_COLUMNS order."""
    scaled = scaler.transform_array(kpis.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64))
    features = time_features(kpis.index).to_numpy(dtype=np.float64)
    out = pd.DataFrame(
        np.hstack([scaled, features]),
        index=pd.DatetimeIndex(kpis.index, name=TIME_COLUMN),
        columns=list(FEATURE_COLUMNS),
    )
    if not np.isfinite(out.to_numpy()).all():
        raise DataProblem("scaled values are not finite (a KPI far outside the train range?)")
    return out


def validate_processed(frame: pd.DataFrame, split: str) -> None:
    """Raise DataProblem unless `frame` meets the processed-data contract in DESIGN.md."""
    if list(frame.columns) != list(FEATURE_COLUMNS):
        raise DataProblem(f"{split}: columns {list(frame.columns)} differ from FEATURE_COLUMNS")
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or index.name != TIME_COLUMN or index.tz is not None:
        raise DataProblem(f"{split}: index must be a UTC-naive DatetimeIndex named '{TIME_COLUMN}'")
    if len(index) > 1 and not (np.diff(index.as_unit("ns").asi8) == STEP.value).all():
        raise DataProblem(f"{split}: timestamps are not strictly consecutive 2-minute steps")
    if not all(dtype == np.float64 for dtype in frame.dtypes):
        raise DataProblem(f"{split}: every column must be float64")
    if not np.isfinite(frame.to_numpy()).all():
        raise DataProblem(f"{split}: NaN or infinite values")


def prepare_splits(
    train_raw: pd.DataFrame, test_raw: pd.DataFrame, options: PreprocessOptions | None = None
) -> PreparedData:
    """Clean both raw splits, fit the scaler on train, sample, scale and add the time features.

    `train_raw` / `test_raw`: frames as `read_raw_csv` (or `pd.read_csv`) returns them, with a `time`
    column and the 11 KPI columns. Raises DataProblem for data that cannot be used.
    """
    options = options or PreprocessOptions()
    train_clean, train_report = clean_split(train_raw, "train", options.max_gap_steps)
    test_clean, test_report = clean_split(test_raw, "test", options.max_gap_steps)
    scaler, scaler_report = fit_scaler(train_clean)

    train_kpis, train_sampling = sample_rows(
        train_clean, options.sample_train_rows, options.sample_strategy, options.sample_seed, stream=0
    )
    test_kpis, test_sampling = sample_rows(
        test_clean, options.sample_test_rows, options.sample_strategy, options.sample_seed, stream=1
    )
    for split, kpis in (("train", train_kpis), ("test", test_kpis)):
        if len(kpis) < options.min_rows:
            raise DataProblem(
                f"{split}: {len(kpis)} rows after cleaning and sampling, fewer than one window of "
                f"input_seq_len + output_seq_len = {options.min_rows}"
            )

    train = assemble(train_kpis, scaler)
    test = assemble(test_kpis, scaler)
    validate_processed(train, "train")
    validate_processed(test, "test")
    return PreparedData(
        train=train,
        test=test,
        scaler=scaler,
        repairs={"train": train_report, "test": test_report, "scaler": scaler_report},
        sampling={"train": train_sampling, "test": test_sampling},
    )


REPAIR_EVENTS: tuple[str, ...] = (
    "non_numeric_cells",
    "infinite_cells",
    "implausible_cells",
    "nan_cells",
    "rows_all_kpis_missing",
    "unsorted_rows",
    "off_grid_timestamps",
    "duplicate_timestamps",
    "grid_slots_inserted",
)


def repair_count(report: Mapping[str, Any]) -> int:
    """Repairs a split report records: each event counted once (`cells_filled` is their consequence)."""
    return sum(int(report.get(key, 0)) for key in REPAIR_EVENTS) + len(report.get("ignored_columns", []))
