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

from pydantic import BaseModel

from flts_cli import locust_cmd
from flts_cli.services import python_module
from flts_cli.settings import pipeline_names
from flts_cli.stack import HOST, LocalStack, StackConfig, StackError, free_port, free_ports
from flts_cli.state import RunState, Stage, StageError, need
from flts_cli.watch import EventWatcher
from shared.events import DataClaim, GateCheck, ModelType, PromotionDecision, TrainingEvent, TrainingStatus
from shared.kafka import ensure_topics, wait_for_broker
from shared.mlflow_utils import connect, wait_for_mlflow
from shared.processed import load_meta
from shared.promotion import latest_decision
from shared.settings import BaseServiceSettings
from shared.storage import ObjectStore

if TYPE_CHECKING:  # importing mlflow costs seconds; `flts up` should not pay them
    from mlflow.tracking import MlflowClient

StageOutcome = Literal["ok", "skipped"]
StageFunction = Callable[[RunState, Stage], StageOutcome]

# Fixed waits for steps whose length does not grow with the data (unlike --stage-timeout).
SERVICES_HEALTHY_S = 120.0
CLAIM_AFTER_JOB_S = 60.0
MODEL_LIVE_S = 120.0


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
        {"inference": f"{run.inference_url}/healthz", "evaluator": f"http://{HOST}:{eval_port}/healthz"},
    )
    stage.detail["inference_url"] = run.inference_url
    stage.detail["processes"] = {s.name: s.proc.pid for s in run.services if s.proc is not None}
    return "ok"


def preprocess(run: RunState, stage: Stage) -> StageOutcome:
    options = run.options
    extra = {"DATASET_NAME": options.dataset, "EXTRA_HASH_SALT": options.salt}
    if options.sample_train_rows:
        extra["SAMPLE_TRAIN_ROWS"] = str(options.sample_train_rows)
    if options.sample_test_rows:
        extra["SAMPLE_TEST_ROWS"] = str(options.sample_test_rows)
    triggered = datetime.now(UTC)
    run.triggered_at = time.monotonic()
    job = run.start("preprocess", python_module("preprocess_container"), extra, job=True)
    code = job.wait(options.stage_timeout)
    if code is None:
        job.kill()
        raise StageError(f"did not finish in {options.stage_timeout:.0f}s")
    if code != 0:
        raise StageError(f"exit code {code}:\n{job.log_tail(8)}")
    claim = _await_claim(run)
    meta = load_meta(need(run.store, "the object store"), claim.bucket, claim.meta_object)
    run.claim = claim
    run.rows = {"train": claim.rows, "test": claim.test_rows or meta.rows.test}
    # Same inputs give the same config hash, and the job re-publishes what it made before.
    stage.detail.update(config_hash=claim.config_hash, reused_processed_data=meta.created_at < triggered)
    return "ok"


def training(run: RunState, stage: Stage) -> StageOutcome:
    claim = need(run.claim, "the data claim")
    run.previous_decision = _earlier_decision(run, claim)
    if run.previous_decision is not None:
        stage.detail["note"] = (
            f"config hash already trained and {run.previous_decision.decision.value}; nothing retrained"
        )
        return "skipped"
    model_types = tuple(t.model_type.value for t in _trainers(run))
    status: dict[str, str] = dict.fromkeys(model_types, "waiting")
    events: dict[str, TrainingEvent] = {}
    client = connect(run.env["MLFLOW_TRACKING_URI"])
    epochs: dict[str, str] = {}
    last_epoch_check = 0.0
    deadline = run.deadline()
    while any(s != TrainingStatus.SUCCESS.value for s in status.values()):
        run.check_services()
        if time.monotonic() > deadline:
            raise StageError(f"timed out; status {status}")
        event = _next_event(run, 0.3)
        if isinstance(event, TrainingEvent) and event.config_hash == claim.config_hash:
            if event.model_type.value not in status:
                continue
            status[event.model_type.value] = event.status.value
            events[event.model_type.value] = event
            if event.status == TrainingStatus.FAILED:
                raise StageError(f"{event.model_type.value} failed: {event.error}")
        elif isinstance(event, PromotionDecision) and event.config_hash == claim.config_hash:
            # The evaluator may decide before the last trainer's SUCCESS is read here.
            run.decision = event
        if time.monotonic() - last_epoch_check > 2:
            last_epoch_check = time.monotonic()
            epochs = _epoch_progress(client, events, status)
        run.terminal.update(
            "training", "  ".join(f"{t}: {epochs.get(t, status[t].lower())}" for t in model_types)
        )
    stage.detail["runs"] = {t: e.run_id for t, e in events.items()}
    return "ok"


def evaluation(run: RunState, stage: Stage) -> StageOutcome:
    """Wait for the evaluator's decision; a refusal fails the run at once with its reason."""
    claim = need(run.claim, "the data claim")
    outcome: StageOutcome = "ok"
    if run.previous_decision is not None:
        run.decision = run.previous_decision
        stage.detail["note"] = "decision of this config hash reused"
        outcome = "skipped"
    deadline = run.deadline()
    while run.decision is None:
        if time.monotonic() > deadline:
            topic = need(run.names, "the topic names").TOPIC_PROMOTION_DECISIONS
            raise StageError(f"no {topic} event for this config hash (see logs/evaluator.log)")
        run.check_services()
        event = _next_event(run, 0.3)
        if isinstance(event, PromotionDecision) and event.config_hash == claim.config_hash:
            run.decision = event
        else:
            run.terminal.update("evaluation", "waiting for the evaluator's decision")
    decision = run.decision
    stage.detail.update(decision=decision.decision.value, reason=decision.reason)
    if decision.pointer is None:
        raise StageError(refusal_message(decision))
    run.pointer = decision.pointer
    stage.detail.update(model_type=decision.pointer.model_type.value, run_id=decision.pointer.run_id)
    return outcome


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
    pointer = need(run.pointer, "the promotion pointer")
    deadline = time.monotonic() + MODEL_LIVE_S
    while time.monotonic() < deadline:
        run.check_services()
        info = _http_json(f"{run.inference_url}/model")
        if info and info.get("run_id") == pointer.run_id:
            run.trigger_to_live_seconds = round(time.monotonic() - run.triggered_at, 2)
            stage.detail["trigger_to_live_seconds"] = run.trigger_to_live_seconds
            return "ok"
        run.terminal.update("inference_live", f"waiting for inference to serve {pointer.run_id[:8]}")
        time.sleep(0.3)
    raise StageError(f"inference did not serve run {pointer.run_id} within {MODEL_LIVE_S:.0f}s")


def load_test(run: RunState, stage: Stage) -> StageOutcome:
    options = run.options
    results = run.report_dir / "locust"
    argv = locust_cmd.headless_command(
        run.inference_url, options.load_users, options.load_spawn_rate, options.load_duration, results
    )
    swarm = run.start("locust", argv, locust_cmd.data_env(options.dataset), job=True)
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
    run.load_test = stats
    stage.detail.update(stats)
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
    report_writer.write_report(document, run.report_dir, client, run.pointer)
    return "ok"


PIPELINE: tuple[tuple[str, StageFunction], ...] = (
    ("infrastructure", infrastructure),
    ("services", services),
    ("preprocess", preprocess),
    ("training", training),
    ("evaluation", evaluation),
    ("inference_live", inference_live),
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


def _next_event(run: RunState, timeout_s: float) -> BaseModel | None:
    """The next event on a watched topic; each topic has its own event type."""
    got = need(run.watcher, "the event watcher").poll(timeout_s)
    return got[1] if got else None


def _await_claim(run: RunState) -> DataClaim:
    deadline = time.monotonic() + CLAIM_AFTER_JOB_S
    while time.monotonic() < deadline:
        event = _next_event(run, 0.5)
        if isinstance(event, DataClaim) and event.dataset == run.options.dataset:
            return event
    topic = need(run.names, "the topic names").TOPIC_TRAINING_DATA
    raise StageError(f"the job exited 0 but no {topic} claim arrived in {CLAIM_AFTER_JOB_S:.0f}s")


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
