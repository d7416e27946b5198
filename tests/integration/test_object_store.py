"""ObjectStore against the real S3 server: round trips and the typed missing-object error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from shared.data import FEATURE_COLUMNS, STEP, TIME_COLUMN
from shared.storage import ObjectNotFound, ObjectStore


@pytest.fixture
def bucket(object_store: ObjectStore, unique_name: Callable[[str], str]) -> str:
    name = unique_name("store-test")
    object_store.ensure_bucket(name)
    return name


def test_bytes_round_trip_unchanged_including_every_byte_value(
    object_store: ObjectStore, bucket: str
) -> None:
    data = bytes(range(256)) * 64 + b"\x00tail"
    object_store.put_bytes(bucket, "raw/blob.bin", data)

    assert object_store.get_bytes(bucket, "raw/blob.bin") == data
    assert object_store.exists(bucket, "raw/blob.bin")
    assert object_store.size(bucket, "raw/blob.bin") == len(data)


def test_json_round_trip_keeps_nesting_unicode_and_numbers(object_store: ObjectStore, bucket: str) -> None:
    value = {
        "identifier": "PobleSec",
        "rows": {"train": 15927, "test": 3982},
        "scaler": {"data_min": [0.0, -1.5e-9], "data_range": [1e12, 3.25]},
        "note": "Poble Sec — Barcelona ✓",
        "flags": [True, False, None],
    }
    object_store.put_json(bucket, "meta/meta.json", value)

    assert object_store.get_json(bucket, "meta/meta.json") == value


def test_parquet_round_trip_preserves_datetime_index_columns_and_values(
    object_store: ObjectStore, bucket: str
) -> None:
    rng = np.random.default_rng(7)
    index = pd.date_range("2018-02-05 23:40", periods=500, freq=STEP, name=TIME_COLUMN)
    frame = pd.DataFrame(rng.random((500, len(FEATURE_COLUMNS))), index=index, columns=list(FEATURE_COLUMNS))

    size = object_store.put_parquet(bucket, "h/train.parquet", frame)
    back = object_store.get_parquet(bucket, "h/train.parquet")

    assert size == object_store.size(bucket, "h/train.parquet")
    assert isinstance(back.index, pd.DatetimeIndex)
    assert back.index.name == TIME_COLUMN
    assert back.index.tz is None
    assert list(back.columns) == list(FEATURE_COLUMNS)
    assert (back.dtypes == np.float64).all()
    pd.testing.assert_frame_equal(back, frame, check_freq=False)


def test_missing_key_or_bucket_raises_object_not_found(object_store: ObjectStore, bucket: str) -> None:
    with pytest.raises(ObjectNotFound) as missing_key:
        object_store.get_bytes(bucket, "no/such/key.json")
    assert (missing_key.value.bucket, missing_key.value.key) == (bucket, "no/such/key.json")
    assert "no/such/key.json" in str(missing_key.value)

    with pytest.raises(ObjectNotFound):
        object_store.get_json(bucket, "absent.json")
    with pytest.raises(ObjectNotFound):
        object_store.get_parquet(bucket, "absent.parquet")
    with pytest.raises(ObjectNotFound):
        object_store.size(bucket, "absent.bin")
    with pytest.raises(ObjectNotFound):
        object_store.get_bytes(f"{bucket}-never-created", "k")
    assert not object_store.exists(bucket, "no/such/key.json")


def test_list_keys_filters_by_prefix_and_ensure_bucket_is_idempotent(
    object_store: ObjectStore, bucket: str
) -> None:
    for key in ("a/1.json", "a/2.json", "b/1.json"):
        object_store.put_json(bucket, key, {"key": key})
    object_store.ensure_bucket(bucket)  # a second call must neither fail nor empty the bucket

    assert sorted(object_store.list_keys(bucket, "a/")) == ["a/1.json", "a/2.json"]
    assert sorted(object_store.list_keys(bucket)) == ["a/1.json", "a/2.json", "b/1.json"]
    assert object_store.list_keys(bucket, "c/") == []
