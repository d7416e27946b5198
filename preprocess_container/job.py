"""The preprocess job: dataset bucket -> processed-data/<config_hash>/ -> claims on Kafka.

One run:
1. make sure `<name>.csv` and `<name>_test.csv` are in the dataset bucket (upload the shipped files
   from DATA_DIR when the bucket lacks them), then read them back: the bucket is the source of truth;
2. digest the bytes and compute `config_hash` (settings + EXTRA_HASH_SALT + source digests);
3. if `processed-data/<hash>/meta.json` and both Parquet objects exist, reuse them; otherwise clean,
   scale and sample (preprocess_container.preprocessing), write train.parquet and test.parquet, then meta.json
   last, so meta.json existing means the set is complete;
4. publish the claim on `training-data` and on `inference-data` (key = config_hash), only after the
   objects are written.

Data that can never be processed (`Refused`: a missing dataset object, a missing KPI column, an
unparsable time column, too few rows...) is reported on `DLQ-training-data` and ends the run with
EXIT_REFUSED (10), permanent; infrastructure trouble ends it with EXIT_INFRA (3) and a crash with
Python's own 1, both retried by the Job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preprocess_container.preprocessing import (
    STEP_SECONDS,
    DataProblem,
    config_hash,
    content_digest,
    hash_config,
    prepare_splits,
    read_raw_csv,
    repair_count,
)
from preprocess_container.settings import PreprocessSettings
from shared.data import FEATURE_COLUMNS
from shared.events import DataClaim, DeadLetter, dlq_topic
from shared.kafka import TRANSIENT_ERRORS, EventProducer, TransientError, ensure_topics
from shared.processed import InvalidMeta, ProcessedMeta, SourceObjects, SplitRows, load_meta
from shared.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

SERVICE = "preprocess"
EXIT_OK = 0
# 1 is what Python exits with on an uncaught exception: a crash, which the Job retries. A refusal
# needs a code of its own so that the Job's podFailurePolicy fails at once on it and only on it.
EXIT_REFUSED = 10
EXIT_INVALID_SETTINGS = 2
EXIT_INFRA = 3


class Refused(Exception):
    """The request can never succeed as configured; the message says why."""


@dataclass(frozen=True)
class JobResult:
    config_hash: str
    reused: bool
    training_claim: DataClaim
    inference_claim: DataClaim
    timings: dict[str, float]


class StepTimer:
    """Log how long each step took and keep the numbers for the final summary."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str, **context: Any) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - started, 4)
        self.timings[name] = seconds
        log.info("step done", extra={"step": name, "seconds": seconds, **context})


def processed_keys(digest: str) -> dict[str, str]:
    return {
        "train": f"{digest}/train.parquet",
        "test": f"{digest}/test.parquet",
        "meta": f"{digest}/meta.json",
    }


def ensure_dataset(settings: PreprocessSettings, store: ObjectStore) -> None:
    """Upload the shipped CSVs for objects the dataset bucket lacks; refuse if neither has them."""
    bucket = settings.BUCKET_DATASET
    store.ensure_bucket(bucket)
    for key in (settings.train_object, settings.test_object):
        if store.exists(bucket, key):
            continue
        local = Path(settings.data_dir) / key
        if not local.is_file():
            raise Refused(
                f"dataset object s3://{bucket}/{key} does not exist and there is no {local} to upload"
            )
        data = local.read_bytes()
        store.put_bytes(bucket, key, data, content_type="text/csv")
        log.info(
            "uploaded shipped dataset file",
            extra={"bucket": bucket, "key": key, "source": str(local), "bytes": len(data)},
        )


def _read_source(store: ObjectStore, bucket: str, key: str) -> bytes:
    try:
        return store.get_bytes(bucket, key)
    except ObjectNotFound as exc:
        # Deleted between the existence check and the read: as missing as it gets.
        raise Refused(str(exc)) from exc


def _claims(
    settings: PreprocessSettings, digest: str, rows: SplitRows, sizes: dict[str, int]
) -> tuple[DataClaim, DataClaim]:
    keys = processed_keys(digest)

    def claim(split: str, split_rows: int) -> DataClaim:
        return DataClaim(
            bucket=settings.BUCKET_PROCESSED,
            object=keys[split],
            size=sizes[split],
            rows=split_rows,
            meta_object=keys["meta"],
            test_object=keys["test"],
            test_rows=rows.test,
            config_hash=digest,
            identifier=settings.identifier,
            dataset=settings.DATASET_NAME,
        )

    # DESIGN.md: inference-data carries "the same claim shape for the test split", so `object`
    # points at the test split there (and `test_object` stays the test split in both).
    return claim("train", rows.train), claim("test", rows.test)


def _existing(store: ObjectStore, bucket: str, digest: str) -> ProcessedMeta | None:
    """meta.json of a complete earlier run of the same hash, or None."""
    keys = processed_keys(digest)
    if not store.exists(bucket, keys["meta"]):
        return None
    if not (store.exists(bucket, keys["train"]) and store.exists(bucket, keys["test"])):
        log.warning("processed set incomplete; processing again", extra={"config_hash": digest})
        return None
    try:
        meta = load_meta(store, bucket, keys["meta"])
    except InvalidMeta as exc:
        log.warning("meta.json unusable; processing again", extra={"config_hash": digest, "error": str(exc)})
        return None
    if meta.config_hash != digest:
        log.warning("meta.json names another hash; processing again", extra={"config_hash": digest})
        return None
    return meta


def run_job(settings: PreprocessSettings, store: ObjectStore, producer: EventProducer) -> JobResult:
    """Process (or reuse) the dataset and publish both claims. Raises Refused or DataProblem."""
    timer = StepTimer()
    started = time.perf_counter()
    dataset_bucket, processed_bucket = settings.BUCKET_DATASET, settings.BUCKET_PROCESSED
    ctx = {"dataset": settings.DATASET_NAME, "identifier": settings.identifier}

    with timer.step("ensure_dataset", **ctx):
        ensure_dataset(settings, store)
        store.ensure_bucket(processed_bucket)
    with timer.step("read_sources", **ctx):
        sources = {
            key: _read_source(store, dataset_bucket, key)
            for key in (settings.train_object, settings.test_object)
        }
    options = settings.options()
    config = hash_config(settings.DATASET_NAME, options)
    digests = {key: content_digest(data) for key, data in sources.items()}
    digest = config_hash(config, settings.EXTRA_HASH_SALT, digests)
    ctx["config_hash"] = digest
    log.info("config hash computed", extra={**ctx, "source_digests": digests})

    keys = processed_keys(digest)
    meta = _existing(store, processed_bucket, digest)
    reused = meta is not None
    if meta is not None:
        rows = meta.rows
        sizes = {split: store.size(processed_bucket, keys[split]) for split in ("train", "test")}
        log.info("already processed; reusing the objects", extra={**ctx, "rows": rows.model_dump()})
    else:
        with timer.step("parse", **ctx):
            train_raw = read_raw_csv(sources[settings.train_object], "train")
            test_raw = read_raw_csv(sources[settings.test_object], "test")
        with timer.step("prepare", **ctx):
            prepared = prepare_splits(train_raw, test_raw, options)
        for split in ("train", "test"):
            report = prepared.repairs[split]
            log.info(
                "repairs",
                extra={**ctx, "split": split, "repair_count": repair_count(report), "repairs": report},
            )
        log.info("scaler", extra={**ctx, **prepared.repairs["scaler"]})
        rows = SplitRows(train=len(prepared.train), test=len(prepared.test))
        with timer.step("write", **ctx):
            sizes = {
                "train": store.put_parquet(processed_bucket, keys["train"], prepared.train),
                "test": store.put_parquet(processed_bucket, keys["test"], prepared.test),
            }
            meta = ProcessedMeta(
                config_hash=digest,
                dataset=settings.DATASET_NAME,
                identifier=settings.identifier,
                config={**config, "extra_hash_salt": settings.EXTRA_HASH_SALT},
                source_digests=digests,
                source_objects=SourceObjects(
                    bucket=dataset_bucket, train=settings.train_object, test=settings.test_object
                ),
                columns=FEATURE_COLUMNS,
                rows=rows,
                scaler=prepared.scaler,
                step_seconds=STEP_SECONDS,
                repairs=prepared.repairs,
                sampling=prepared.sampling,
                created_at=datetime.now(UTC),
            )
            # Written last: its presence marks a complete set for the next run of the same hash.
            store.put_json(processed_bucket, keys["meta"], meta.model_dump(mode="json"))

    training, inference = _claims(settings, digest, rows, sizes)
    with timer.step("publish", **ctx):
        # Keyed by station: with several trainer replicas, stations train in parallel while one
        # station's claims stay in order on one partition.
        producer.publish(settings.TOPIC_TRAINING_DATA, training.identifier, training)
        producer.publish(settings.TOPIC_INFERENCE_DATA, inference.identifier, inference)
    timer.timings["total"] = round(time.perf_counter() - started, 4)
    log.info(
        "preprocess finished",
        extra={
            **ctx,
            "reused": reused,
            "rows": rows.model_dump(),
            "sizes": sizes,
            "timings": timer.timings,
        },
    )
    return JobResult(digest, reused, training, inference, timer.timings)


def dead_letter(settings: PreprocessSettings, producer: EventProducer, error: str) -> None:
    """Report a refused request on DLQ-<training-data>: no source message, so partition/offset -1."""
    letter = DeadLetter(
        error=error,
        payload=json.dumps(settings.request(), sort_keys=True),
        topic=settings.TOPIC_TRAINING_DATA,
        partition=-1,
        offset=-1,
        service=SERVICE,
    )
    producer.publish(dlq_topic(settings.TOPIC_TRAINING_DATA), settings.identifier, letter)


def refusal_message(exc: Exception) -> str:
    kind = "data problem" if isinstance(exc, DataProblem) else "refused"
    return f"{kind}: {exc}"


INFRA_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, BotoCoreError, ClientError)


def execute(settings: PreprocessSettings, store: ObjectStore, producer: EventProducer) -> int:
    """Run the job once and map the outcome to the process exit code."""
    try:
        run_job(settings, store, producer)
        return EXIT_OK
    except (Refused, DataProblem) as exc:
        message = refusal_message(exc)
        log.error("preprocess refused", extra={**settings.request(), "error": message})
        try:
            dead_letter(settings, producer, message)
        except INFRA_ERRORS as dlq_exc:
            log.error("could not publish the dead letter", extra={"error": str(dlq_exc)})
            return EXIT_INFRA
        return EXIT_REFUSED
    except INFRA_ERRORS as exc:
        log.error(
            "infrastructure failure; the job can be retried",
            extra={"error": f"{type(exc).__name__}: {exc}", "dataset": settings.DATASET_NAME},
        )
        return EXIT_INFRA


def ensure_job_topics(settings: PreprocessSettings) -> None:
    """Create what the job produces to, so consumers subscribed early see the topics at once."""
    ensure_topics(
        settings.KAFKA_BOOTSTRAP_SERVERS,
        [
            settings.TOPIC_TRAINING_DATA,
            settings.TOPIC_INFERENCE_DATA,
            dlq_topic(settings.TOPIC_TRAINING_DATA),
        ],
    )


def wait_for_store(store: ObjectStore, bucket: str, timeout_s: float) -> None:
    """Return once the object store answers (creating `bucket` if needed); bounded by timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.ensure_bucket(bucket)
            return
        except BotoCoreError as exc:
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"object store at {store.endpoint_url} did not answer within {timeout_s:.0f}s: {exc}"
                ) from exc
            time.sleep(0.5)
