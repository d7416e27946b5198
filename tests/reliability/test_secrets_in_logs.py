"""No credential in logs: every service runs at DEBUG against the real stack, then its log and
the stack's own logs (broker, S3 server, MLflow server) are grepped for the stack's generated
secret key and for credential shapes."""

from __future__ import annotations

from pathlib import Path

from flts_cli.stack import StackConfig, free_port
from shared.events import dlq_topic
from shared.kafka import ensure_topics
from tests.helpers.processes import ServiceProcess
from tests.reliability.conftest import SMALL_SAMPLE, run_preprocess
from tests.reliability.support import http_status, unique
from tests.unit.test_no_secrets import scan


def test_service_and_stack_logs_at_debug_hold_no_credential(
    stack: StackConfig, service_env: dict[str, str], tmp_path: Path
) -> None:
    debug = {**service_env, "LOG_LEVEL": "DEBUG"}
    training, inference, events, selected = (
        unique(t) for t in ("training-data", "inference-data", "model-training", "model-selected")
    )
    ensure_topics(
        stack.kafka_bootstrap, [training, inference, events, selected, dlq_topic(training), dlq_topic(events)]
    )
    topics = {
        "TOPIC_TRAINING_DATA": training,
        "TOPIC_INFERENCE_DATA": inference,
        "TOPIC_MODEL_TRAINING": events,
        "TOPIC_MODEL_SELECTED": selected,
    }
    eval_port, inference_port = free_port(), free_port()
    services = [
        ServiceProcess(
            "eval_container",
            {**debug, **topics, "HEALTH_PORT": str(eval_port), "CONSUMER_GROUP": unique("evaluator")},
            tmp_path / "evaluator.log",
        ),
        ServiceProcess(
            "inference_container",
            {**debug, **topics, "INFERENCE_HOST": "127.0.0.1", "INFERENCE_PORT": str(inference_port)},
            tmp_path / "inference.log",
        ),
        ServiceProcess(
            "train_container",
            {**debug, **topics, "MODEL_TYPE": "GRU", "KAFKA_GROUP_ID": unique("trainer"), "EPOCHS": "1"},
            tmp_path / "trainer.log",
        ),
    ]
    for service in services:
        service.start()
    try:
        fresh = {"BUCKET_PROCESSED": unique("processed"), "EXTRA_HASH_SALT": unique("salt")}
        job = run_preprocess({**debug, **topics, **SMALL_SAMPLE, **fresh})
        assert job.returncode == 0, job.stderr[-2000:]
        (tmp_path / "preprocess.log").write_text(job.stdout + job.stderr)
        evaluator, server, trainer = services
        evaluator.wait_until(
            lambda: http_status(f"http://127.0.0.1:{eval_port}/readyz") == 200, 60, "the evaluator's /readyz"
        )
        server.wait_until(
            lambda: http_status(f"http://127.0.0.1:{inference_port}/healthz") == 200,
            60,
            "inference's /healthz",
        )
        # The trainer consumes the claim the job just published: its whole path logs at DEBUG.
        trainer.wait_until(
            lambda: "training event published" in trainer.log_text(), 120, "the trainer to train"
        )
    finally:
        for service in services:
            service.stop()

    logs = sorted(tmp_path.glob("*.log")) + sorted(Path(stack.state_dir).glob("*.log"))
    assert len(logs) >= 7, logs
    assert all(path.stat().st_size > 0 for path in logs), [(p.name, p.stat().st_size) for p in logs]
    offenders = []
    for path in logs:
        text = path.read_text(errors="replace")
        if stack.secret_key in text:
            offenders.append(f"{path.name}: the generated secret key")
        offenders += [f"{path.name}: {hit}" for hit in scan(text)]
    assert not offenders, offenders
