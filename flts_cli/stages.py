"""The stages of `flts run`, in the order they run.

A stage is a function of the run state and its own `Stage` record. It reads what earlier stages
left in the state, adds what later ones need, notes for the report what a reader would ask about,
and returns "ok" or "skipped"; it fails by raising (StageError when it can say what went wrong).
Every service runs as its own OS process exactly as its container would: the runner only
triggers the preprocess job and watches Kafka, MLflow and the inference API.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from flts_cli import locust_cmd
from flts_cli.fleet import served_run_ids
from flts_cli.services import python_module
from flts_cli.settings import pipeline_names
from flts_cli.stack import HOST, LocalStack, StackConfig, StackError, free_port, free_ports
from flts_cli.state import RunState, Stage, StageError, StageFailed, Station, need
from flts_cli.watch import EventWatcher
from shared.events import (
    DataClaim,
    GateCheck,
    ModelType,
    PromotionDecision,
    PromotionPointer,
    TrainingEvent,
    TrainingStatus,
)
from shared.kafka import TransientError, ensure_topics, wait_for_broker
from shared.mlflow_utils import (
    connect,
    describe_missing_artifacts,
    missing_model_artifacts,
    mlflow_unreachable,
    wait_for_mlflow,
)
from shared.processed import load_meta
from shared.promotion import latest_decision
from shared.settings import BaseServiceSettings
from shared.storage import ObjectStore

if TYPE_CHECKING:  # importing mlflow costs seconds; `flts up` should not pay them
    from mlflow.tracking import MlflowClient

StageOutcome = Literal["ok", "skipped", "partial"]
StageFunction = Callable[[RunState, Stage], StageOutcome]

# Fixed waits for steps whose length does not grow with the data (unlike --stage-timeout).
SERVICES_HEALTHY_S = 120.0
CLAIM_AFTER_JOB_S = 60.0
MODEL_LIVE_S = 120.0
# A promoted run inference has not served this long gets its model files checked: a run whose
# files are gone can never load, and saying so beats waiting out MODEL_LIVE_S.
ARTIFACT_CHECK_AFTER_S = 5.0
# How soon a check that could not reach MLflow is tried again.
ARTIFACT_RECHECK_S = 5.0
BATCH_FORECAST_S = 120.0
# The tag the batch forecaster sets on the champion's run: where its latest batch forecast is
# (docs/DESIGN.md, "Batch forecasts"), beside the run's batch_* metrics.
BATCH_OBJECT_TAG = "batch_forecast_object"


@dataclass(frozen=True)
class Trainer:
    model_type: ModelType
    module: str
    # GRU and LSTM share one trainer that MODEL_TYPE picks between; only they train in epochs.
    neural: bool

    @property
    def name(self) -> str:
        return f"train-{self.model_type.value.lower()}"

    def env(self, epochs: int | None) -> dict[str, str]:
        if not self.neural:
            return {}
        return {"MODEL_TYPE": self.model_type.value, **({} if epochs is None else {"EPOCHS": str(epochs)})}


TRAINERS = (
    Trainer(ModelType.GRU, "train_container", neural=True),
    Trainer(ModelType.LSTM, "train_container", neural=True),
    Trainer(ModelType.PROPHET, "nonml_container", neural=False),
)
MODEL_TYPES = tuple(trainer.model_type.value for trainer in TRAINERS)


def _trainers(run: RunState) -> tuple[Trainer, ...]:
    """The trainers of the model types this run trains (`--model-types`), in TRAINERS order."""
    return tuple(t for t in TRAINERS if t.model_type.value in run.options.model_types)


def infrastructure(run: RunState, stage: Stage) -> StageOutcome:
    external = run.settings.external_env()
    if external is not None:
        run.env = external
        wait_for_broker(run.env["KAFKA_BOOTSTRAP_SERVERS"], 30)
        wait_for_mlflow(run.env["MLFLOW_TRACKING_URI"], 30)
        stage.detail["mode"] = "external"
    else:
        kafka_port, s3_port, mlflow_port = free_ports(3)
        config = StackConfig(
            kafka_port=kafka_port,
            s3_port=s3_port,
            mlflow_port=mlflow_port,
            state_dir=run.report_dir / "stack",
        )
        run.stack = LocalStack(config)
        try:
            run.stack.start()
        except StackError as exc:
            raise StageError(str(exc)) from exc
        run.env = config.service_env()
        stage.detail["mode"] = "embedded"
    # Read from the environment the services get, so the runner watches the topics and
    # buckets they use, overrides included.
    run.names = BaseServiceSettings.model_validate(run.service_env({}))
    ensure_topics(run.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline_names("TOPIC_", run.names))
    run.store = ObjectStore(
        run.env["MLFLOW_S3_ENDPOINT_URL"],
        run.env["AWS_ACCESS_KEY_ID"],
        run.env["AWS_SECRET_ACCESS_KEY"],
    )
    stage.detail["endpoints"] = {
        "kafka": run.env["KAFKA_BOOTSTRAP_SERVERS"],
        "s3": run.env["MLFLOW_S3_ENDPOINT_URL"],
        "mlflow": run.env["MLFLOW_TRACKING_URI"],
    }
    return "ok"


def services(run: RunState, stage: Stage) -> StageOutcome:
    trainers = _trainers(run)
    for trainer in trainers:
        run.start(trainer.name, python_module(trainer.module), trainer.env(run.options.epochs))
    eval_port = free_port()
    run.start(
        "evaluator",
        python_module("eval_container"),
        {
            "HEALTH_PORT": str(eval_port),
            "SKILL_GATE": "false" if run.options.no_skill_gate else "true",
            "EXPECTED_MODEL_TYPES": ",".join(t.model_type.value for t in trainers),
        },
    )
    inference_port = free_port()
    run.inference_url = f"http://{HOST}:{inference_port}"
    run.start(
        "inference",
        python_module("inference_container"),
        {"INFERENCE_HOST": HOST, "INFERENCE_PORT": str(inference_port)},
    )
    batch_port = free_port()
    run.start("batch-forecast", python_module("batch_container"), {"HEALTH_PORT": str(batch_port)})
    # Watch before anything is triggered: the first group join takes seconds.
    topics = need(run.names, "the topic names")
    run.watcher = EventWatcher(
        run.env["KAFKA_BOOTSTRAP_SERVERS"],
        {
            topics.TOPIC_TRAINING_DATA: DataClaim,
            topics.TOPIC_MODEL_TRAINING: TrainingEvent,
            topics.TOPIC_PROMOTION_DECISIONS: PromotionDecision,
        },
        since=datetime.now(UTC),
    )
    _wait_healthy(
        run,
        {
            "inference": f"{run.inference_url}/healthz",
            "evaluator": f"http://{HOST}:{eval_port}/healthz",
            "batch-forecast": f"http://{HOST}:{batch_port}/healthz",
        },
    )
    stage.detail["inference_url"] = run.inference_url
    stage.detail["processes"] = {s.name: s.proc.pid for s in run.services if s.proc is not None}
    return "ok"


def preprocess(run: RunState, stage: Stage) -> StageOutcome:
    """One preprocess job per station, all at once; each publishes its station's claims."""
    options = run.options
    triggered = datetime.now(UTC)
    run.triggered_at = time.monotonic()
    jobs = {}
    for station in run.stations.values():
        extra = {"DATASET_NAME": station.dataset, "EXTRA_HASH_SALT": options.salt}
        if options.sample_train_rows:
            extra["SAMPLE_TRAIN_ROWS"] = str(options.sample_train_rows)
        if options.sample_test_rows:
            extra["SAMPLE_TEST_ROWS"] = str(options.sample_test_rows)
        name = run.process_name("preprocess", station)
        jobs[station.dataset] = run.start(name, python_module("preprocess_container"), extra, job=True)
    deadline = run.deadline()
    for station in run.active():
        job = jobs[station.dataset]
        code = job.wait(max(0.0, deadline - time.monotonic()))
        if code is None:
            job.kill()
            _give_up(run, stage, station, f"did not finish in {options.stage_timeout:.0f}s")
        elif code != 0:
            _give_up(run, stage, station, f"exit code {code}:\n{job.log_tail(8)}")
    _await_claims(run, stage)
    store = need(run.store, "the object store")
    for station in run.active():
        claim = need(station.claim, "the data claim")
        meta = load_meta(store, claim.bucket, claim.meta_object)
        station.rows = {"train": claim.rows, "test": claim.test_rows or meta.rows.test}
        # Same inputs give the same config hash, and the job re-publishes what it made before.
        _station_detail(
            run,
            stage,
            station,
            config_hash=claim.config_hash,
            reused_processed_data=meta.created_at < triggered,
        )
    return _outcome(run, stage, "ok")


def training(run: RunState, stage: Stage) -> StageOutcome:
    for station in run.active():
        station.previous_decision = _earlier_decision(run, need(station.claim, "the data claim"))
        if station.previous_decision is not None:
            outcome = station.previous_decision.decision.value
            _station_detail(
                run, stage, station, note=f"config hash already trained and {outcome}; nothing retrained"
            )
    waiting = [s for s in run.active() if s.previous_decision is None]
    if not waiting:
        return "skipped"
    model_types = tuple(t.model_type.value for t in _trainers(run))
    client = connect(run.env["MLFLOW_TRACKING_URI"])
    epochs: dict[str, dict[str, str]] = {}
    last_epoch_check = 0.0
    deadline = run.deadline()
    while waiting:
        run.check_services()
        progress = {s.dataset: _training_progress(run, s, model_types) for s in waiting}
        for station in list(waiting):
            events, status = progress[station.dataset]
            failed = [e for e in events.values() if e.status == TrainingStatus.FAILED]
            if failed:
                _give_up(run, stage, station, f"{failed[0].model_type.value} failed: {failed[0].error}")
            elif all(s == TrainingStatus.SUCCESS.value for s in status.values()):
                _station_detail(run, stage, station, runs={t: e.run_id for t, e in events.items()})
            elif time.monotonic() > deadline:
                _give_up(run, stage, station, f"timed out; status {status}")
            else:
                continue
            waiting.remove(station)
        if time.monotonic() - last_epoch_check > 2:
            last_epoch_check = time.monotonic()
            epochs = {name: _epoch_progress(client, *progress[name]) for name in progress}
        run.terminal.update("training", _training_line(progress, epochs, model_types))
        if waiting:
            _read_event(run, 0.3)
    return _outcome(run, stage, "ok")


def evaluation(run: RunState, stage: Stage) -> StageOutcome:
    """Wait for the evaluator's decisions; a refusal gives up on its station with its reason (at
    once when it is the only one) and fails the run once the others are through."""
    outcome: StageOutcome = "ok"
    for station in run.active():
        if station.previous_decision is not None:
            station.decision = station.previous_decision
            _station_detail(run, stage, station, note="decision of this config hash reused")
    if all(station.previous_decision is not None for station in run.active()):
        outcome = "skipped"
    deadline = run.deadline()
    while undecided := [s for s in run.active() if _decided(run, s) is None]:
        if time.monotonic() > deadline:
            topic = need(run.names, "the topic names").TOPIC_PROMOTION_DECISIONS
            for station in undecided:
                _give_up(
                    run, stage, station, f"no {topic} event for this config hash (see logs/evaluator.log)"
                )
            break
        run.check_services()
        run.terminal.update("evaluation", f"waiting for the evaluator's decision on {_names(undecided)}")
        _read_event(run, 0.3)
    for station in run.active():
        decision = need(station.decision, "the decision")
        _station_detail(run, stage, station, decision=decision.decision.value, reason=decision.reason)
        if decision.pointer is None:
            _give_up(run, stage, station, refusal_message(decision))
            continue
        station.pointer = decision.pointer
        _station_detail(
            run, stage, station, model_type=decision.pointer.model_type.value, run_id=decision.pointer.run_id
        )
    return _outcome(run, stage, outcome)


def refusal_message(decision: PromotionDecision) -> str:
    """The refusal's reason and every check with its figures, as the terminal shows them."""
    lines = [f"the evaluator refused promotion: {decision.reason}"]
    lines += [f"  {_check_line(check)}" for check in decision.checks]
    return "\n".join(lines)


def _check_line(check: GateCheck) -> str:
    def figure(value: float | None) -> str:
        return "missing" if value is None else f"{value:.6g}"

    verdict = "pass" if check.passed else "FAIL"
    return (
        f"{check.model_type.value} {check.run_id[:8]} {check.name}: {figure(check.value)} "
        f"vs persistence {figure(check.baseline)} {verdict}"
    )


def inference_live(run: RunState, stage: Stage) -> StageOutcome:
    """Wait until `GET /model` serves every promoted station's run.

    Gives up on a station at once when its run lacks model files in the object store (naming
    them), looked at when inference reports a failed load of the promoted run or once the run is
    not served after ARTIFACT_CHECK_AFTER_S; otherwise after MODEL_LIVE_S, quoting the last load
    failure inference reported (a transient one heals: inference retries its loads)."""
    waiting = {station.identifier: station for station in run.active()}
    began = time.monotonic()
    deadline = began + MODEL_LIVE_S
    # identifier -> when to look at its run's files (next); None once they were found complete.
    check_at: dict[str, float | None] = dict.fromkeys(waiting, began + ARTIFACT_CHECK_AFTER_S)
    client: MlflowClient | None = None
    reasons: dict[str, str] = {}  # identifier -> the last load failure inference reported
    while waiting:
        run.check_services()
        body = _http_json(f"{run.inference_url}/model")
        served = served_run_ids(body)
        failures = load_failures(body)
        for identifier, station in list(waiting.items()):
            run_id = need(station.pointer, "the promotion pointer").run_id
            if served.get(identifier) == run_id:
                station.trigger_to_live_seconds = round(time.monotonic() - run.triggered_at, 2)
                _station_detail(run, stage, station, trigger_to_live_seconds=station.trigger_to_live_seconds)
                del waiting[identifier]
                continue
            failure = failures.get(identifier)
            if failure is not None and failure[0] == run_id:
                # Inference retries a failed load (an MLflow blip heals); missing files never do,
                # so a reported failure has the run's files looked at now.
                reasons[identifier] = failure[1]
                if check_at[identifier] is not None:
                    check_at[identifier] = min(check_at[identifier] or 0.0, time.monotonic())
            due = check_at[identifier]
            if due is None or time.monotonic() < due:
                continue
            if client is None:
                client = connect(run.env["MLFLOW_TRACKING_URI"])
            try:
                problem = _model_files_problem(client, need(station.pointer, "the promotion pointer"))
            except TransientError:
                # MLflow busy or away: asked again soon; MODEL_LIVE_S still bounds the wait.
                check_at[identifier] = time.monotonic() + ARTIFACT_RECHECK_S
                continue
            if problem is None:
                check_at[identifier] = None
                continue
            _give_up(run, stage, station, problem)
            del waiting[identifier]
        if not waiting:
            break
        if time.monotonic() > deadline:
            for identifier, station in waiting.items():
                run_id = need(station.pointer, "the promotion pointer").run_id
                message = f"inference did not serve run {run_id} for {identifier} within {MODEL_LIVE_S:.0f}s"
                if identifier in reasons:
                    message += f"; its last load failure: {reasons[identifier]}"
                _give_up(run, stage, station, f"{message}; it served {served or 'nothing'}")
            break
        pending = ", ".join(f"{i} {need(s.pointer, 'the pointer').run_id[:8]}" for i, s in waiting.items())
        run.terminal.update("inference_live", f"waiting for inference to serve {pending}")
        time.sleep(0.3)
    live = [s.trigger_to_live_seconds for s in run.stations.values() if s.trigger_to_live_seconds is not None]
    run.trigger_to_live_seconds = max(live, default=None)
    if len(run.stations) > 1:
        stage.detail["trigger_to_all_live_seconds"] = run.trigger_to_live_seconds
    return _outcome(run, stage, "ok")


def load_failures(body: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """identifier -> (run_id, reason) of each station whose model inference failed to load, as
    `GET /model` reports them under `failed`; an answer without them reports none."""
    failed = body.get("failed") if body else None
    if not isinstance(failed, dict):
        return {}
    failures: dict[str, tuple[str, str]] = {}
    for identifier, entry in failed.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str):
            continue
        reason = entry.get("reason") or entry.get("error") or "no reason given"
        failures[str(identifier)] = (entry["run_id"], str(reason))
    return failures


def _model_files_problem(client: MlflowClient, pointer: PromotionPointer) -> str | None:
    """Why the promoted run's model cannot load from the object store (the files it lacks), or
    None when they are all there. TransientError when MLflow cannot be reached."""
    try:
        missing = missing_model_artifacts(client, pointer.run_id, pointer.model_type.value)
    except Exception as exc:
        if mlflow_unreachable(exc):
            raise TransientError(f"MLflow unreachable: {exc}") from exc
        # MLflow answered, and will answer the same: files it cannot list cannot be loaded.
        return f"MLflow cannot list the artifacts of run {pointer.run_id}: {str(exc)[:300]}"
    return describe_missing_artifacts(pointer.run_id, missing) if missing else None


def batch_forecast(run: RunState, stage: Stage) -> StageOutcome:
    """Wait until the batch forecaster stored each live station's test split as forecast by its
    champion (the champion's run then names the object and holds its errors); copy each Parquet
    beside the report."""
    client = connect(run.env["MLFLOW_TRACKING_URI"])
    store = need(run.store, "the object store")
    waiting = {station.identifier: station for station in run.active()}
    deadline = time.monotonic() + BATCH_FORECAST_S
    while waiting:
        run.check_services()
        for identifier, station in list(waiting.items()):
            claim = need(station.claim, "the data claim")
            run_id = need(station.pointer, "the promotion pointer").run_id
            found = _batch_of(client, run_id, claim.config_hash)
            if found is None:
                continue
            uri, metrics = found
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            file = (
                "batch-forecast.parquet"
                if len(run.stations) == 1
                else f"batch-forecast-{station.dataset}.parquet"
            )
            (run.report_dir / file).write_bytes(store.get_bytes(bucket, key))
            _station_detail(run, stage, station, object=uri, file=file, run_id=run_id, metrics=metrics)
            del waiting[identifier]
        if not waiting:
            break
        if time.monotonic() > deadline:
            for station in waiting.values():
                run_id = need(station.pointer, "the promotion pointer").run_id
                message = f"no batch forecast by run {run_id} within {BATCH_FORECAST_S:.0f}s"
                _give_up(run, stage, station, f"{message} (see logs/batch-forecast.log)")
            break
        run.terminal.update("batch_forecast", f"waiting for the batch forecast of {', '.join(waiting)}")
        time.sleep(0.5)
    return _outcome(run, stage, "ok")


def load_test(run: RunState, stage: Stage) -> StageOutcome:
    """A swarm spread over the stations that went live."""
    options = run.options
    results = run.report_dir / "locust"
    argv = locust_cmd.headless_command(
        run.inference_url, options.load_users, options.load_spawn_rate, options.load_duration, results
    )
    stations = [station.dataset for station in run.active()]
    # The repaired test splits, not the raw CSVs: any station that can be promoted can be load-tested.
    env = locust_cmd.data_env(stations, locust_cmd.repaired_test_splits(run))
    swarm = run.start("locust", argv, env, job=True)
    began = time.monotonic()
    while swarm.running:
        run.check_services()
        run.terminal.update("load_test", f"{options.load_users} users, {time.monotonic() - began:.0f}s")
        swarm.wait(0.5)
        if time.monotonic() - began > options.stage_timeout:
            swarm.kill()
            raise StageError("Locust did not finish")
    from flts_cli import report as report_writer  # matplotlib: only when a report is due

    stats = report_writer.read_locust_stats(results)
    run.load_test = {**stats, "stations": stations}
    stage.detail.update(run.load_test)
    if stats["requests"] == 0:
        raise StageError(f"no requests were made (see {swarm.log_path})")
    if stats["failures"]:
        raise StageError(f"{stats['failures']} of {stats['requests']} requests failed")
    return "ok"


def report(run: RunState, stage: Stage) -> StageOutcome:
    """Runs last whatever happened before, so it reads only what the stages got to fill in."""
    from flts_cli import report as report_writer  # matplotlib: only when a report is due

    client = connect(run.env["MLFLOW_TRACKING_URI"]) if run.env else None
    document = report_writer.build_report(run, client, total_seconds=round(time.monotonic() - run.started, 2))
    pointers = {name: s.pointer for name, s in run.stations.items() if s.pointer is not None}
    report_writer.write_report(document, run.report_dir, client, pointers)
    return "ok"


PIPELINE: tuple[tuple[str, StageFunction], ...] = (
    ("infrastructure", infrastructure),
    ("services", services),
    ("preprocess", preprocess),
    ("training", training),
    ("evaluation", evaluation),
    ("inference_live", inference_live),
    ("batch_forecast", batch_forecast),
    ("load_test", load_test),
)


# -- helpers of the stages above --------------------------------------------------------------
def _wait_healthy(run: RunState, pending: dict[str, str]) -> None:
    """Wait until every service's health URL in `pending` (name -> URL) answers."""
    deadline = time.monotonic() + SERVICES_HEALTHY_S
    while pending:
        run.check_services()
        for name, url in list(pending.items()):
            if _http_json(url) is not None:
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise StageError(f"not healthy after {SERVICES_HEALTHY_S:.0f}s: {', '.join(pending)}")
        run.terminal.update("services", f"waiting for {', '.join(pending) or 'trainers'}")
        time.sleep(0.3)


def _batch_of(client: MlflowClient, run_id: str, config_hash: str) -> tuple[str, dict[str, float]] | None:
    """The object (s3://bucket/key) of the run's batch forecast of `config_hash`'s split, and the
    batch's errors, once the batch forecaster logged them on the run; else None."""
    try:
        data = client.get_run(run_id).data
    except Exception:  # MLflow busy or briefly away: asked again on the next round
        return None
    uri = data.tags.get(BATCH_OBJECT_TAG, "")
    if f"/{config_hash}/" not in uri:
        return None
    return uri, {name: value for name, value in sorted(data.metrics.items()) if "batch_" in name}


def _read_event(run: RunState, timeout_s: float) -> None:
    """Keep the next event of a watched topic, if one comes within `timeout_s`."""
    got = need(run.watcher, "the event watcher").poll(timeout_s)
    if got:
        run.events.append(got[1])


def _give_up(run: RunState, stage: Stage, station: Station, message: str) -> None:
    """Stop taking `station` through the pipeline; the others go on."""
    station.failed = StageFailed(stage.name, message)
    _station_detail(run, stage, station, error=message)


def _outcome(run: RunState, stage: Stage, outcome: StageOutcome) -> StageOutcome:
    """The stage's outcome once it is through with every station: it fails when none is left."""
    gave_up = [s for s in run.stations.values() if s.failed is not None and s.failed.stage == stage.name]
    if not run.active():
        if len(gave_up) == 1:
            raise StageError(need(gave_up[0].failed, "the failure").message)
        raise StageError(
            "no station left:\n" + "\n".join(f"{s.dataset}: {s.failed.message}" for s in gave_up if s.failed)
        )
    return "partial" if gave_up else outcome


def _station_detail(run: RunState, stage: Stage, station: Station, **values: Any) -> None:
    """Note `values` in the stage's detail: at the top with one station, else under its name."""
    if len(run.stations) == 1:
        stage.detail.update(values)
    else:
        stage.detail.setdefault("stations", {}).setdefault(station.dataset, {}).update(values)


def _names(stations: list[Station]) -> str:
    return ", ".join(station.dataset for station in stations)


def _await_claims(run: RunState, stage: Stage) -> None:
    """Each station's data claim, published by its job before it exited 0."""
    deadline = time.monotonic() + CLAIM_AFTER_JOB_S
    while missing := [s for s in run.active() if _claim_of(run, s) is None]:
        if time.monotonic() > deadline:
            topic = need(run.names, "the topic names").TOPIC_TRAINING_DATA
            for station in missing:
                _give_up(
                    run,
                    stage,
                    station,
                    f"the job exited 0 but no {topic} claim arrived in {CLAIM_AFTER_JOB_S:.0f}s",
                )
            return
        _read_event(run, 0.5)


def _claim_of(run: RunState, station: Station) -> DataClaim | None:
    if station.claim is None:
        station.claim = next(
            (e for e in run.events if isinstance(e, DataClaim) and e.dataset == station.dataset), None
        )
    return station.claim


def _decided(run: RunState, station: Station) -> PromotionDecision | None:
    if station.decision is None:
        claim = need(station.claim, "the data claim")
        station.decision = next(
            (
                e
                for e in run.events
                if isinstance(e, PromotionDecision)
                and (e.identifier, e.config_hash) == (claim.identifier, claim.config_hash)
            ),
            None,
        )
    return station.decision


def _training_progress(
    run: RunState, station: Station, model_types: tuple[str, ...]
) -> tuple[dict[str, TrainingEvent], dict[str, str]]:
    """Each model type's newest training event and status for the station's config hash."""
    config_hash = need(station.claim, "the data claim").config_hash
    events: dict[str, TrainingEvent] = {}
    for event in run.events:
        if (
            isinstance(event, TrainingEvent)
            and event.config_hash == config_hash
            and event.model_type.value in model_types
        ):
            events[event.model_type.value] = event
    status = {t: events[t].status.value if t in events else "waiting" for t in model_types}
    return events, status


def _training_line(
    progress: dict[str, tuple[dict[str, TrainingEvent], dict[str, str]]],
    epochs: dict[str, dict[str, str]],
    model_types: tuple[str, ...],
) -> str:
    """The status line: each model type's state, per station when there are several."""

    def line(name: str) -> str:
        status = progress[name][1]
        shown = epochs.get(name, {})
        return "  ".join(f"{t}: {shown.get(t, status[t].lower())}" for t in model_types)

    if len(progress) == 1:
        return line(next(iter(progress)))
    return "  |  ".join(f"{name} {line(name)}" for name in progress)


def _earlier_decision(run: RunState, claim: DataClaim) -> PromotionDecision | None:
    """The evaluator's earlier decision on this config hash, if it made one."""
    store = need(run.store, "the object store")
    bucket = need(run.names, "the bucket names").BUCKET_PROMOTION
    return latest_decision(store, bucket, claim.identifier, claim.config_hash)


def _epoch_progress(
    client: MlflowClient, events: dict[str, TrainingEvent], status: dict[str, str]
) -> dict[str, str]:
    """The last epoch each running trainer logged, for the status line; best effort."""
    progress: dict[str, str] = {}
    for model_type, event in events.items():
        if status.get(model_type) != TrainingStatus.RUNNING.value or not event.run_id:
            continue
        try:
            history = client.get_metric_history(event.run_id, "epoch")
        except Exception:
            continue
        if history:
            progress[model_type] = f"epoch {max(m.step for m in history)}"
    return progress


def _http_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return None
            body: dict[str, Any] = json.loads(response.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None
