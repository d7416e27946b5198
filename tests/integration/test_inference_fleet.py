"""One real replica (`python -m inference_container`) serving a fleet of stations at once, with
IDENTIFIERS unset: it discovers stations by listing the promotion bucket and hears promotions on
Kafka. A promotion of one station never changes another's answers, even with requests in flight
for both; unknown, omitted and not-yet-loaded stations get 404, 422 and 503; a failed load of a
new champion keeps the previous model and shows in /model; /metrics labels stay bounded.

The tests run in file order and build on each other's state (one replica, one bucket)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import torch

from flts_cli.stack import StackConfig
from shared.data import KPI_COLUMNS
from shared.events import ModelType
from shared.kafka import EventProducer, ensure_topics
from shared.model_runtime.networks import ModelSpec, RecurrentNetwork, build_model
from shared.storage import ObjectStore
from tests.helpers.waiting import wait_until
from tests.integration import test_inference_support as inference_support
from tests.integration.test_inference_lifecycle import Replica
from tests.integration.test_inference_support import (
    LoggedModel,
    load_test_split,
    log_model_run,
    make_pointer,
    pointer_to,
    window_body,
    write_pointer,
)

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    return {key: f"fleet{key}-{suffix}" for key in ("A", "B", "C")}


def _offset_model(offset: float) -> Callable[[ModelSpec], RecurrentNetwork]:
    """Networks that forecast `down` and `up` `offset` train ranges above the last value: an
    untrained network forecasts the last value whatever its seed, so each model gets its own."""

    def build(spec: ModelSpec) -> RecurrentNetwork:
        model = build_model(spec)
        with torch.no_grad():
            bias = torch.zeros_like(model.head.bias).view(spec.output_seq_len, spec.n_targets)
            bias[:, [KPI_COLUMNS.index("down"), KPI_COLUMNS.index("up")]] = offset
            model.head.bias.copy_(bias.view(-1))
        return model

    return build


@pytest.fixture(scope="module")
def models(
    stack: StackConfig, tmp_path_factory: pytest.TempPathFactory, names: dict[str, str]
) -> dict[str, LoggedModel]:
    root = tmp_path_factory.mktemp("fleet-models")
    logged: dict[str, LoggedModel] = {}
    for seed, (key, station) in enumerate((("A1", "A"), ("A2", "A"), ("B1", "B"), ("C1", "C")), start=1):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(inference_support, "build_model", _offset_model(0.05 * seed))
            logged[key] = log_model_run(stack, root, identifier=names[station], seed=seed)
    return logged


@pytest.fixture(scope="module")
def fleet(
    service_env: dict[str, str],
    stack: StackConfig,
    object_store: ObjectStore,
    models: dict[str, LoggedModel],
    names: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Replica, str, str]]:
    bucket = f"fleet-promotion-{uuid.uuid4().hex[:8]}"
    object_store.ensure_bucket(bucket)
    topic = f"model-selected-fleet-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.kafka_bootstrap, [topic])
    # Only station A has a champion when the replica starts.
    write_pointer(object_store, make_pointer(models["A1"], names["A"], age_s=60), bucket=bucket)
    env = {
        **service_env,
        "BUCKET_PROMOTION": bucket,
        "TOPIC_MODEL_SELECTED": topic,
        "POINTER_POLL_S": "0.5",
        "MODEL_RELOAD_BACKOFF_S": "0.2",
        "MODEL_RELOAD_MAX_BACKOFF_S": "1",
        "MAX_METRIC_IDENTIFIERS": "2",
    }
    env.pop("IDENTIFIERS", None)
    replica = Replica(env, tmp_path_factory.mktemp("fleet") / "replica.log")
    try:
        wait_until(
            lambda: replica.status().get("consumer_assigned"), 90, "the promotion consumer", interval_s=0.3
        )
        wait_until(lambda: replica.status_code("/readyz") == 200, 60, "station A's model", interval_s=0.2)
        yield replica, bucket, topic
    finally:
        replica.stop()


def predict(replica: Replica, body: dict[str, Any], **params: str) -> httpx.Response:
    return httpx.post(
        replica.url + "/predict", content=orjson.dumps(body), headers=JSON, params=params, timeout=10
    )


def body_for(identifier: str | None, start: int = 100) -> dict[str, Any]:
    body = window_body(load_test_split(), start, inference_length=2)
    if identifier is not None:
        body["identifier"] = identifier
    return body


def model_doc(replica: Replica) -> dict[str, Any]:
    return replica.status("/model")


def test_with_one_station_loaded_the_identifier_may_be_omitted(
    fleet: tuple[Replica, str, str], models: dict[str, LoggedModel], names: dict[str, str]
) -> None:
    replica, _, _ = fleet
    omitted = predict(replica, body_for(None))
    named = predict(replica, body_for(names["A"]))
    assert omitted.status_code == 200, omitted.text
    assert omitted.json() == named.json()
    assert omitted.json()["identifier"] == names["A"] and omitted.json()["run_id"] == models["A1"].run_id


def test_a_second_station_is_discovered_and_each_answers_with_its_own_champion(
    fleet: tuple[Replica, str, str],
    object_store: ObjectStore,
    models: dict[str, LoggedModel],
    names: dict[str, str],
) -> None:
    replica, bucket, _ = fleet
    write_pointer(object_store, make_pointer(models["B1"], names["B"], age_s=60), bucket=bucket)
    wait_until(lambda: names["B"] in replica.status("/readyz").get("models", {}), 60, "station B's model")
    a, b = predict(replica, body_for(names["A"])), predict(replica, body_for(names["B"]))
    assert (a.status_code, b.status_code) == (200, 200)
    assert a.json()["run_id"] == models["A1"].run_id and b.json()["run_id"] == models["B1"].run_id
    assert a.json()["predictions"] != b.json()["predictions"]  # two networks, two forecasts
    # The query parameter wins over the body.
    both = predict(replica, body_for(names["A"]), identifier=names["B"])
    assert both.json()["run_id"] == models["B1"].run_id

    omitted = predict(replica, body_for(None))
    assert omitted.status_code == 422
    assert omitted.json()["loaded"] == sorted([names["A"], names["B"]])
    assert names["A"] in omitted.json()["detail"] and "identifier" in omitted.json()["detail"]

    unknown = predict(replica, body_for("Nowhere"))
    assert unknown.status_code == 404
    assert unknown.json()["loaded"] == sorted([names["A"], names["B"]])
    assert "Nowhere" in unknown.json()["detail"] and names["B"] in unknown.json()["detail"]

    described = model_doc(replica)
    assert described["status"] == "ready" and described["failed"] == {}
    assert set(described["models"]) == {names["A"], names["B"]}
    for key, station in (("A1", "A"), ("B1", "B")):
        entry = described["models"][names[station]]
        assert entry["run_id"] == models[key].run_id and entry["model_type"] == "GRU"
        assert entry["score"] == pytest.approx(0.077) and entry["loaded_at"]
    one = httpx.get(replica.url + "/model", params={"identifier": names["B"]}, timeout=5).json()
    assert one["run_id"] == models["B1"].run_id and one["status"] == "ready"
    assert httpx.get(replica.url + "/models/Nowhere", timeout=5).status_code == 404


def test_a_station_with_a_champion_not_loaded_yet_is_503_and_keeps_the_replica_unready(
    fleet: tuple[Replica, str, str],
    object_store: ObjectStore,
    models: dict[str, LoggedModel],
    names: dict[str, str],
) -> None:
    replica, bucket, _ = fleet
    # C's champion names a run that does not exist: its load fails and is retried, never served.
    ghost = pointer_to(names["C"], uuid.uuid4().hex, ModelType.GRU)
    write_pointer(object_store, ghost, bucket=bucket)
    wait_until(lambda: names["C"] in model_doc(replica).get("failed", {}), 60, "station C's failed load")
    answer = predict(replica, body_for(names["C"]))
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
    assert "no model loaded yet" in answer.json()["detail"]
    ready = httpx.get(replica.url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["missing"] == [names["C"]]
    assert model_doc(replica)["status"] == "loading"
    # The other stations serve on regardless.
    assert predict(replica, body_for(names["A"])).status_code == 200

    write_pointer(object_store, make_pointer(models["C1"], names["C"]), bucket=bucket)
    wait_until(lambda: replica.status_code("/readyz") == 200, 60, "station C's real champion")
    assert predict(replica, body_for(names["C"])).json()["run_id"] == models["C1"].run_id
    assert model_doc(replica)["failed"] == {}


def _stream(
    replica: Replica, station: str, stop: threading.Event, seen: list[tuple[int, str | None, bytes]]
) -> None:
    raw = orjson.dumps(body_for(station, start=321))
    with httpx.Client(base_url=replica.url, timeout=10.0) as client:
        while not stop.is_set():
            response = client.post("/predict", content=raw, headers=JSON)
            body = response.json()
            predictions = orjson.dumps(body.get("predictions"))
            seen.append((response.status_code, body.get("run_id"), predictions))


def test_a_promotion_of_one_station_never_changes_another_stations_answers_during_the_swap(
    fleet: tuple[Replica, str, str], stack: StackConfig, models: dict[str, LoggedModel], names: dict[str, str]
) -> None:
    replica, _, topic = fleet
    seen: dict[str, list[tuple[int, str | None, bytes]]] = {"A": [], "B": []}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_stream, args=(replica, names[key], stop, seen[key]), daemon=True)
        for key in ("A", "B")
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    producer = EventProducer(stack.kafka_bootstrap, "test-inference-fleet")
    try:
        wait_until(lambda: all(len(s) >= 20 for s in seen.values()), 30, "requests to flow before the swap")
        producer.publish(topic, names["A"], make_pointer(models["A2"], names["A"]))
        wait_until(
            lambda: model_doc(replica)["models"][names["A"]]["run_id"] == models["A2"].run_id,
            60,
            "station A's swap",
            interval_s=0.2,
        )
        counts = {key: len(s) for key, s in seen.items()}
        wait_until(lambda: all(len(seen[k]) >= counts[k] + 20 for k in seen), 30, "requests after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        producer.close()
    assert {status for status, _, _ in seen["A"] + seen["B"]} == {200}
    # B: one run and one answer, byte for byte, before, during and after A's swap.
    assert {run for _, run, _ in seen["B"]} == {models["B1"].run_id}
    assert len({predictions for _, _, predictions in seen["B"]}) == 1
    # A: the old model, then the new one, each with one answer of its own.
    runs = [run for _, run, _ in seen["A"]]
    assert runs[0] == models["A1"].run_id and runs[-1] == models["A2"].run_id
    answers = {run: {p for _, r, p in seen["A"] if r == run} for run in set(runs)}
    assert set(answers) == {models["A1"].run_id, models["A2"].run_id}
    assert all(len(found) == 1 for found in answers.values()) and len(set.union(*answers.values())) == 2
    assert model_doc(replica)["models"][names["B"]]["run_id"] == models["B1"].run_id


def test_a_new_champion_that_fails_to_load_keeps_the_previous_model_and_shows_in_model(
    fleet: tuple[Replica, str, str], stack: StackConfig, models: dict[str, LoggedModel], names: dict[str, str]
) -> None:
    replica, _, topic = fleet
    before = predict(replica, body_for(names["B"])).json()
    ghost_run = uuid.uuid4().hex
    producer = EventProducer(stack.kafka_bootstrap, "test-inference-fleet-ghost")
    producer.publish(topic, names["B"], pointer_to(names["B"], ghost_run, ModelType.GRU))
    producer.close()
    wait_until(lambda: names["B"] in model_doc(replica).get("failed", {}), 60, "station B's failed load")
    described = model_doc(replica)
    assert described["failed"][names["B"]]["run_id"] == ghost_run and described["failed"][names["B"]]["error"]
    assert described["models"][names["B"]]["run_id"] == models["B1"].run_id
    assert described["pending"][names["B"]] == ghost_run
    station = httpx.get(f"{replica.url}/models/{names['B']}", timeout=5).json()
    assert station["failed"]["run_id"] == ghost_run and station["run_id"] == models["B1"].run_id
    assert predict(replica, body_for(names["B"])).json() == before
    # Still ready: every station with a champion has a model to answer with.
    assert replica.status_code("/readyz") == 200


def test_metrics_label_each_station_up_to_the_bound_and_the_rest_as_other(
    fleet: tuple[Replica, str, str], names: dict[str, str]
) -> None:
    replica, _, _ = fleet
    for key in ("A", "B", "C"):
        assert predict(replica, body_for(names[key])).status_code == 200
    assert predict(replica, body_for("Nowhere")).status_code == 404
    text = httpx.get(replica.url + "/metrics", timeout=5).text
    labelled = {name for name in names.values() if f'identifier="{name}"' in text}
    # MAX_METRIC_IDENTIFIERS=2: the first two stations loaded are named, the third is _other,
    # and so is any name a client makes up.
    assert labelled == {names["A"], names["B"]}
    assert 'inference_requests_total{identifier="_other",route="/predict",status="200"}' in text
    assert 'inference_requests_total{identifier="_other",route="/predict",status="404"}' in text
    assert "Nowhere" not in text
    assert "inference_models_loaded 3.0" in text
