"""The batch forecaster's decisions, on in-memory stand-ins for S3, Kafka and MLflow: when a batch
is written, that a redelivery writes nothing, how a promotion reuses the latest claim, what is
poison. The same paths against the real services: tests/integration/test_batch_forecast.py."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from batch_container.forecast import COLUMNS, HORIZON, KIND
from batch_container.keys import forecast_key, latest_claim_key, record_key
from batch_container.service import BatchClaim, BatchForecaster
from batch_container.settings import BatchSettings
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler, time_features
from shared.events import BatchForecast, BatchTrigger, ModelType, PromotionPointer, model_dict
from shared.kafka import EventProducer, MessageContext, PoisonMessage
from shared.model_runtime.pyfunc import WindowModel
from shared.processed import ProcessedMeta, SourceObjects, SplitRows
from shared.storage import ObjectNotFound, ObjectStore

STATION = "PobleSec"
PROCESSED = "processed-data"
HASH_A, HASH_B = "a" * 64, "b" * 64
STEP = np.timedelta64(120, "s")
CTX = MessageContext("inference-data", 0, 7, STATION)


class Buckets:
    """ObjectStore's methods the forecaster uses, over a dict; every write is counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.writes: list[tuple[str, str]] = []

    def exists(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self.objects

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "") -> None:
        self.objects[(bucket, key)] = data
        self.writes.append((bucket, key))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        if (bucket, key) not in self.objects:
            raise ObjectNotFound(bucket, key)
        return self.objects[(bucket, key)]

    def size(self, bucket: str, key: str) -> int:
        return len(self.get_bytes(bucket, key))

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        self.put_bytes(bucket, key, json.dumps(value, sort_keys=True, default=str).encode())

    def get_json(self, bucket: str, key: str) -> Any:
        return json.loads(self.get_bytes(bucket, key))

    def put_parquet(self, bucket: str, key: str, frame: pd.DataFrame) -> int:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, engine="pyarrow", index=True)
        self.put_bytes(bucket, key, buffer.getvalue())
        return len(buffer.getvalue())

    def get_parquet(self, bucket: str, key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.get_bytes(bucket, key)), engine="pyarrow")


@dataclass
class Published:
    events: list[tuple[str, str | None, BatchForecast]] = field(default_factory=list)

    def publish(self, topic: str, key: str | None, value: BatchForecast) -> None:
        self.events.append((topic, key, value))


@dataclass
class RunLog:
    batches: list[tuple[str, dict[str, float], dict[str, str]]] = field(default_factory=list)

    def log_batch(self, run_id: str, metrics: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        self.batches.append((run_id, {m.key: m.value for m in metrics}, {t.key: t.value for t in tags}))


@dataclass(frozen=True)
class LastValue:
    """A Forecast: every step repeats the window's last row (original units)."""

    input_seq_len: int = 10
    step: np.timedelta64 = STEP

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        return np.repeat(np.asarray(kpis[-1:], dtype=np.float64), horizon, axis=0)

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        return [self.predict(t, k, h) for t, k, h in windows]


@dataclass
class World:
    settings: BatchSettings
    store: Buckets
    published: Published
    runs: RunLog
    loads: list[str]
    forecaster: BatchForecaster

    def keys(self, config_hash: str, run_id: str) -> tuple[tuple[str, str], tuple[str, str]]:
        bucket = self.settings.BUCKET_BATCH_FORECASTS
        return (
            (bucket, forecast_key(STATION, config_hash, run_id)),
            (bucket, record_key(STATION, config_hash, run_id)),
        )

    def promote(self, run_id: str, age_s: float = 0.0, step_s: int = 120) -> PromotionPointer:
        pointer = PromotionPointer(
            identifier=STATION,
            config_hash=HASH_A,
            run_id=run_id,
            model_type=ModelType.GRU,
            experiment="Default",
            model_uri=f"runs:/{run_id}/GRU",
            rmse=0.1,
            mae=0.05,
            mse=0.01,
            score=0.077,
            weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
            scoreboard=[],
            timestamp=datetime.now(UTC) - timedelta(seconds=age_s),
        )
        self.store.put_json(self.settings.BUCKET_PROMOTION, f"{STATION}/current.json", model_dict(pointer))
        return pointer


def settings() -> BatchSettings:
    return BatchSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MLFLOW_TRACKING_URI="http://127.0.0.1:1",
        MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:2",
        AWS_ACCESS_KEY_ID=SecretStr("test"),
        AWS_SECRET_ACCESS_KEY=SecretStr("test"),
    )


@pytest.fixture
def world() -> World:
    config = settings()
    store, published, runs, loads = Buckets(), Published(), RunLog(), []

    def loader(pointer: PromotionPointer) -> WindowModel:
        loads.append(pointer.run_id)
        scaler = MinMaxScaler(KPI_COLUMNS, (0.0,) * 11, (1000.0,) * 11)
        return WindowModel("GRU", LastValue(), scaler, {}, 1)

    forecaster = BatchForecaster(
        config,
        cast(ObjectStore, store),
        cast(Any, runs),
        cast(EventProducer, published),
        loader=loader,
    )
    return World(config, store, published, runs, loads, forecaster)


def claim(world: World, config_hash: str = HASH_A, rows: int = 30, **extra: Any) -> BatchClaim:
    """A processed test split of `rows` rows in the store, and its claim."""
    times = pd.date_range("2018-02-28 02:34", periods=rows, freq="2min", name="time")
    kpis = pd.DataFrame(
        np.random.default_rng(1).uniform(0.0, 1.0, size=(rows, 11)), index=times, columns=list(KPI_COLUMNS)
    )
    frame = kpis.join(time_features(times))[list(FEATURE_COLUMNS)]
    world.store.put_parquet(PROCESSED, f"{config_hash}/test.parquet", frame)
    meta = ProcessedMeta(
        config_hash=config_hash,
        dataset=STATION,
        identifier=STATION,
        config={},
        source_digests={},
        source_objects=SourceObjects(bucket="dataset", train="t.csv", test="t_test.csv"),
        columns=FEATURE_COLUMNS,
        rows=SplitRows(train=100, test=rows),
        scaler=MinMaxScaler(KPI_COLUMNS, (5.0,) * 11, (100.0,) * 11),
        step_seconds=120,
        repairs={},
        sampling={},
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    world.store.put_json(PROCESSED, f"{config_hash}/meta.json", meta.model_dump(mode="json"))
    return BatchClaim(
        bucket=PROCESSED,
        object=f"{config_hash}/test.parquet",
        test_object=f"{config_hash}/test.parquet",
        meta_object=f"{config_hash}/meta.json",
        size=1,
        rows=rows,
        config_hash=config_hash,
        identifier=STATION,
        dataset=STATION,
        **extra,
    )


def batch_writes(world: World) -> list[tuple[str, str]]:
    bucket = world.settings.BUCKET_BATCH_FORECASTS
    return [w for w in world.store.writes if w[0] == bucket and not w[1].endswith("latest-claim.json")]


def test_a_claim_without_a_champion_is_remembered_and_nothing_else(world: World) -> None:
    the_claim = claim(world)
    world.forecaster.handle(the_claim, CTX)
    assert world.forecaster.latest_claim(STATION) == the_claim
    assert batch_writes(world) == []
    assert world.published.events == [] and world.runs.batches == [] and world.loads == []


def test_a_claim_with_a_champion_is_forecast_stored_logged_and_published_once(world: World) -> None:
    world.promote("run-1")
    world.forecaster.handle(claim(world), CTX)
    parquet, record = world.keys(HASH_A, "run-1")
    assert batch_writes(world) == [parquet, record], "the Parquet first, the record of its event last"
    frame = world.store.get_parquet(*parquet)
    assert tuple(frame.columns) == COLUMNS and len(frame) == 30 + world.settings.BATCH_HORIZON
    [(topic, key, event)] = world.published.events
    assert (topic, key) == (world.settings.TOPIC_BATCH_FORECASTS, STATION)
    assert (event.object, event.run_id, event.trigger) == (parquet[1], "run-1", BatchTrigger.CLAIM)
    assert world.store.get_json(*record) == model_dict(event)
    [(run_id, metrics, tags)] = world.runs.batches
    assert run_id == "run-1" and metrics == event.metrics
    assert {"batch_rmse_down", "batch_rmse_up"} <= set(metrics)
    assert tags["batch_forecast_object"].endswith(parquet[1])
    # The split is unscaled with its meta.json's scaler: actuals are 5 + 100 * scaled.
    assert frame["actual_down"].dropna().between(5.0, 105.0).all()


def test_a_redelivered_claim_writes_nothing_and_publishes_nothing(world: World) -> None:
    world.promote("run-1")
    the_claim = claim(world)
    world.forecaster.handle(the_claim, CTX)
    writes, events = list(world.store.writes), list(world.published.events)
    world.forecaster.handle(the_claim, CTX)
    assert world.store.writes == writes, "a redelivery wrote an object"
    assert world.published.events == events


def test_a_batch_cut_short_after_its_parquet_is_finished_without_writing_it_again(world: World) -> None:
    world.promote("run-1")
    world.forecaster.handle(claim(world), CTX)
    parquet, record = world.keys(HASH_A, "run-1")
    stored = world.store.objects[parquet]
    del world.store.objects[record]  # as if the process died before the event went out
    world.published.events.clear()
    world.forecaster.handle(claim(world), CTX)
    assert world.store.objects[parquet] is stored
    assert batch_writes(world).count(parquet) == 1
    assert len(world.published.events) == 1 and world.store.exists(*record)


def test_a_promotion_forecasts_the_stations_latest_claim_with_the_new_champion(world: World) -> None:
    world.promote("run-1", age_s=60)
    world.forecaster.handle(claim(world, HASH_A), CTX)
    world.forecaster.handle(claim(world, HASH_B), CTX)
    pointer = world.promote("run-2")
    world.forecaster.handle(pointer, MessageContext("model-selected", 0, 3, STATION))
    assert world.store.exists(*world.keys(HASH_B, "run-2")[0])
    assert not world.store.exists(*world.keys(HASH_A, "run-2")[0]), "only the latest claim is forecast again"
    assert world.published.events[-1][2].trigger is BatchTrigger.PROMOTION


def test_a_promotion_superseded_by_a_later_live_champion_forecasts_nothing(world: World) -> None:
    world.forecaster.handle(claim(world), CTX)
    old = world.promote("run-1", age_s=60)
    world.promote("run-2")
    world.forecaster.handle(old, MessageContext("model-selected", 0, 3, STATION))
    assert batch_writes(world) == [] and world.loads == []


def test_a_promotion_before_any_claim_forecasts_nothing(world: World) -> None:
    world.forecaster.handle(world.promote("run-1"), MessageContext("model-selected", 0, 3, STATION))
    assert world.store.writes == [(world.settings.BUCKET_PROMOTION, f"{STATION}/current.json")]
    assert world.published.events == []


def test_an_older_claim_delivered_after_a_newer_one_does_not_replace_it(world: World) -> None:
    older = claim(world, HASH_A)
    newer = claim(world, HASH_B)
    world.forecaster.handle(newer, CTX)
    world.forecaster.handle(older, CTX)
    assert world.forecaster.latest_claim(STATION) == newer
    key = (world.settings.BUCKET_BATCH_FORECASTS, latest_claim_key(STATION))
    assert world.store.writes.count(key) == 1


def test_a_claim_asking_for_a_horizon_gets_it_and_one_beyond_the_limit_is_poison(world: World) -> None:
    world.promote("run-1")
    world.forecaster.handle(claim(world, horizon=30), CTX)
    frame = world.store.get_parquet(*world.keys(HASH_A, "run-1")[0])
    assert int((frame[KIND] == HORIZON).sum()) == 30
    too_far = claim(world, HASH_B, horizon=world.settings.BATCH_MAX_HORIZON + 1)
    with pytest.raises(PoisonMessage, match="BATCH_MAX_HORIZON"):
        world.forecaster.handle(too_far, CTX)


def test_a_claim_whose_split_is_missing_is_poison(world: World) -> None:
    world.promote("run-1")
    the_claim = claim(world)
    del world.store.objects[(PROCESSED, the_claim.test_object)]
    with pytest.raises(PoisonMessage, match="does not exist"):
        world.forecaster.handle(the_claim, CTX)
    assert batch_writes(world) == []


def test_a_split_too_short_for_the_champions_window_is_poison(world: World) -> None:
    world.promote("run-1")
    with pytest.raises(PoisonMessage, match="needs more than 10"):
        world.forecaster.handle(claim(world, rows=10), CTX)


def test_the_champion_is_loaded_once_for_several_batches(world: World) -> None:
    world.promote("run-1")
    world.forecaster.handle(claim(world, HASH_A), CTX)
    world.forecaster.handle(claim(world, HASH_B), CTX)
    assert world.loads == ["run-1"]
