"""The whole pipeline in containers: each service's image, started the way its manifest starts it
(tests/containers/pods.py), against the real broker, S3 server and MLflow server of the session
stack. The preprocess Job's container publishes the claims, the trainers' containers train, the
evaluator's promotes, the inference container answers `/predict` with the promoted run, the batch
forecaster's container stores the champion's forecast of the claimed test split, and the Locust
image drives the inference container headless with zero failures."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from batch_container.forecast import HORIZON, KIND, ROLLING, forecast_column
from flts_cli.stack import StackConfig, free_ports
from shared.data import KPI_COLUMNS
from shared.storage import ObjectStore
from tests.containers.pods import LISTEN_PORT_VARIABLES, PodContainer, docker, unique_container_name
from tests.helpers.waiting import wait_until
from tests.k8s.manifests import Resource, Workload, config_maps, find

pytestmark = pytest.mark.containers

IDENTIFIER = "PobleSec"
LONG_RUNNING = ("train-gru", "train-lstm", "train-prophet", "evaluator", "inference", "batch-forecast")
BATCH_BUCKET = "batch-forecasts"  # the batch forecaster's default, which its manifest keeps


class Pods:
    """The containers one test started; their logs are shown when something fails."""

    def __init__(self, rendered: list[Resource], stack: StackConfig) -> None:
        self.rendered = rendered
        env = stack.service_env()
        self.config_maps = config_maps(rendered)
        self.local = {
            key: env[key]
            for key in ("KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
        }
        self.local["AWS_DEFAULT_REGION"] = env.get("AWS_DEFAULT_REGION", "us-east-1")
        self.secrets = {key: env[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        # Every container shares the host's network: each workload listens on its own free ports.
        self.ports: dict[str, dict[str, int]] = {}
        self.started: dict[str, str] = {}

    def spec(self, kind: str, name: str, container: str | None = None) -> PodContainer:
        return PodContainer.from_workload(
            Workload(find(self.rendered, kind, name)),
            config_maps=self.config_maps,
            local=self.local,
            secrets=self.secrets,
            ports=self._ports_of(name),
            container_name=container,
        )

    def _ports_of(self, name: str) -> dict[str, int]:
        if name not in self.ports:
            taken = {port for ports in self.ports.values() for port in ports.values()}
            drawn = free_ports(len(LISTEN_PORT_VARIABLES))
            # Drawn apart from the others, which their containers may not have bound yet.
            while taken.intersection(drawn):
                drawn = free_ports(len(LISTEN_PORT_VARIABLES))
            self.ports[name] = dict(zip(LISTEN_PORT_VARIABLES, drawn, strict=True))
        return self.ports[name]

    def start(self, kind: str, name: str) -> PodContainer:
        spec = self.spec(kind, name)
        container = unique_container_name(name)
        docker(*spec.run_argv(container, detach=True)[1:])
        self.started[name] = container
        return spec

    def url(self, name: str, variable: str) -> str:
        """Where workload `name` listens on the port its manifest names with `variable`."""
        return f"http://127.0.0.1:{self.ports[name][variable]}"

    def logs(self) -> str:
        parts = []
        for name, container in self.started.items():
            out = docker("logs", "--tail", "40", container, check=False)
            parts.append(f"--- {name} ---\n{out.stdout[-4000:]}{out.stderr[-4000:]}")
        return "\n".join(parts)

    def running(self, name: str) -> bool:
        out = docker("inspect", "-f", "{{.State.Running}}", self.started[name], check=False)
        return out.stdout.strip() == "true"

    def remove_all(self) -> None:
        for container in self.started.values():
            docker("rm", "--force", container, check=False)


@pytest.fixture
def pods(rendered: list[Resource], stack: StackConfig, images: dict[str, str]) -> Iterator[Pods]:
    started = Pods(rendered, stack)
    try:
        yield started
    finally:
        started.remove_all()


def _window(rows: int = 10) -> dict[str, object]:
    """Ten consecutive complete rows of the shipped test split, as `/predict` takes them."""
    import pandas as pd

    from tests.conftest import DATA_DIR

    frame = pd.read_csv(DATA_DIR / f"{IDENTIFIER}_test.csv", parse_dates=["time"]).dropna().iloc[:rows]
    data: dict[str, list[object]] = {"ts": frame["time"].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()}
    for name in KPI_COLUMNS:
        data[name] = frame[name].astype(float).tolist()
    return {"data": data, "inference_length": 3}


def test_pipeline_runs_in_containers_from_job_to_a_load_test_with_zero_failures(
    pods: Pods, stack: StackConfig
) -> None:
    try:
        for name in LONG_RUNNING:
            pods.start("Deployment", name)
        base_url = pods.url("inference", "INFERENCE_PORT")
        # The trainers and the evaluator answer their manifests' probes on their health ports.
        for name in ("train-gru", "train-lstm", "train-prophet", "evaluator", "batch-forecast"):
            ready = functools.partial(_ok, f"{pods.url(name, 'HEALTH_PORT')}/readyz")
            wait_until(ready, timeout_s=120, what=f"{name} ready")

        # A run as `kubectl create job --from=cronjob/preprocess` makes it: the template's pod.
        job = pods.spec("CronJob", "preprocess")
        ran = docker(
            *job.run_argv(unique_container_name("preprocess"), detach=False)[1:], timeout_s=300, check=False
        )
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

        wait_until(
            lambda: _ok(f"{base_url}/readyz") or _crashed(pods),
            timeout_s=420,
            interval_s=2,
            what="the inference container serving a promoted model",
        )
        assert not _crashed(pods), "a container exited"

        client = MlflowClient(stack.mlflow_url)
        champion = client.get_model_version_by_alias(f"flts-{IDENTIFIER}", "champion")
        answer = httpx.post(f"{base_url}/predict", json=_window(), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["run_id"] == champion.run_id
        assert len(answer.json()["predictions"]) == 3
        for probe in ("/healthz", "/readyz"):
            assert _ok(base_url + probe), probe

        _assert_batch_forecast(pods, stack, str(champion.run_id))

        report = _locust(pods, base_url)
        assert report["requests"] > 50, report
        assert report["failures"] == 0, report
    except BaseException:
        print(pods.logs())
        raise


def _assert_batch_forecast(pods: Pods, stack: StackConfig, run_id: str) -> None:
    """The champion's forecast of the claimed test split: every row one step ahead, then the
    manifest's BATCH_HORIZON steps past the split, under `<identifier>/<config_hash>/<run_id>`."""
    store = ObjectStore(stack.s3_url, stack.access_key, stack.secret_key)

    def stored() -> list[str]:
        # The bucket exists: the batch forecaster makes it before it turns ready.
        keys = store.list_keys(BATCH_BUCKET, f"{IDENTIFIER}/")
        return [key for key in keys if key.endswith(f"/{run_id}.parquet")]

    wait_until(lambda: bool(stored()), timeout_s=180, interval_s=2, what="the champion's batch forecast")
    [key] = stored()
    frame = store.get_parquet(BATCH_BUCKET, key)
    horizon = int(pods.spec("Deployment", "batch-forecast").env["BATCH_HORIZON"])
    assert (frame[KIND] == HORIZON).sum() == horizon
    rolling = frame[frame[KIND] == ROLLING]
    assert len(rolling) > 100
    forecasts = rolling[[forecast_column(k) for k in KPI_COLUMNS]].to_numpy()
    # The first INPUT_SEQ_LEN rows have no full window before them; every later row is forecast.
    assert np.isfinite(forecasts[20:]).all()


def _locust(pods: Pods, base_url: str) -> dict[str, int]:
    """The Locust image with the master's security context and environment, headless: one process
    spawns the users, so the master/worker flags of the two Deployments give way to --headless."""
    master = pods.spec("Deployment", "locust-master")
    master.args = [
        "--headless",
        "--host",
        base_url,
        "--users",
        "8",
        "--spawn-rate",
        "8",
        "--run-time",
        "8s",
        "--json",
    ]
    ran = docker(
        *master.run_argv(unique_container_name("locust"), detach=False)[1:], timeout_s=120, check=False
    )
    assert "[" in ran.stdout, ran.stdout[-2000:] + ran.stderr[-3000:]
    stats = json.loads(ran.stdout[ran.stdout.index("[") :])
    total = {"requests": 0, "failures": 0}
    for entry in stats:
        total["requests"] += int(entry["num_requests"])
        total["failures"] += int(entry["num_failures"])
    assert ran.returncode == 0, ran.stderr[-3000:]
    return total


def _ok(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=3).status_code == 200
    return False


def _crashed(pods: Pods) -> bool:
    return any(not pods.running(name) for name in LONG_RUNNING)


def test_every_service_container_keeps_to_its_writable_tmp(pods: Pods) -> None:
    """A read-only root: a write anywhere but the emptyDir fails, in /tmp it works."""
    spec = pods.spec("Deployment", "inference")
    run = ["run", "--rm", "--network", "host", *spec.docker_options]
    check = (
        "import pathlib, sys\n"
        "try:\n    open('/app/written', 'w')\nexcept OSError:\n"
        "    pathlib.Path('/tmp/written').write_text('ok'); sys.exit(0)\n"
        "sys.exit(3)"
    )
    ran = docker(*run, "--entrypoint", "python", spec.image, "-c", check, timeout_s=60, check=False)
    assert ran.returncode == 0, ran.stderr
    uid = docker(*run, "--entrypoint", "id", spec.image, "-u", timeout_s=60, check=False)
    assert uid.stdout.strip() == "10001", uid.stderr
