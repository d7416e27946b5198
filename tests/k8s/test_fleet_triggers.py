"""The fleet triggers (docs/KUBERNETES.md, "Fleet: many stations"): one command starts one station,
one starts them all, and the station reaches its Job through the Job's own env, never through the
shared ConfigMap or the reconciled base.

Where kubectl is installed, `.kubernetes/trigger.sh` and the documented commands run for real
against a fake API server that serves the rendered CronJob and records the Jobs kubectl creates;
elsewhere the same Jobs are built in Python the way kubectl builds them (`job_from_cronjob`,
`set_env`), and `test_python_jobs_match_kubectl` keeps that honest wherever both are available.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from preprocess_container.preprocessing import config_hash, content_digest, hash_config
from preprocess_container.settings import PreprocessSettings
from tests.k8s.dockerfiles import final_stage
from tests.k8s.manifests import KUSTOMIZE_DIR, REPO_ROOT, Resource, config_maps, find, kubectl, settings_from

SCRIPT = KUSTOMIZE_DIR / "trigger.sh"
DOCS = REPO_ROOT / "docs" / "KUBERNETES.md"
DATA_DIR = REPO_ROOT / "data"
FLEET_HEADING = "## Fleet: many stations"
K8S_VERSION = "1.30.0"


def shipped_stations() -> list[str]:
    """Every station whose CSV pair is in data/ (and so in the preprocess image)."""
    return sorted(
        p.name.removesuffix("_test.csv")
        for p in DATA_DIR.glob("*_test.csv")
        if (DATA_DIR / p.name.replace("_test.csv", ".csv")).is_file()
    )


# -- the Jobs as kubectl makes them, in Python ---------------------------------------------------


def job_from_cronjob(cronjob: Resource, name: str) -> Resource:
    """`kubectl create job NAME --from=cronjob/X --dry-run=client -o yaml` (kubectl's
    createJobFromCronJob: the template's spec, labels and annotations, plus an owner reference)."""
    template = cronjob["spec"]["jobTemplate"]
    meta = template.get("metadata", {})
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": cronjob["metadata"]["namespace"],
        "annotations": {"cronjob.kubernetes.io/instantiate": "manual", **meta.get("annotations", {})},
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "name": cronjob["metadata"]["name"],
                "uid": cronjob["metadata"].get("uid", ""),
                "controller": True,
            }
        ],
    }
    if meta.get("labels"):
        metadata["labels"] = dict(meta["labels"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": copy.deepcopy(template["spec"]),
    }


def set_env(job: Resource, pairs: dict[str, str]) -> Resource:
    """`kubectl set env --local -f - K=V...`: replace a variable of the same name, else append."""
    job = copy.deepcopy(job)
    for container in job["spec"]["template"]["spec"]["containers"]:
        env = container.setdefault("env", [])
        for name, value in pairs.items():
            entry = {"name": name, "value": value}
            index = next((i for i, e in enumerate(env) if e["name"] == name), None)
            if index is None:
                env.append(entry)
            else:
                env[index] = entry
    return job


def job_name(station: str, epoch: int) -> str:
    return f"preprocess-{station.lower().replace('_', '-').replace('.', '-')}-{epoch}"


def normalized(job: Resource) -> Resource:
    """kubectl's output less the empty fields it adds (null timestamps, empty status)."""
    job = copy.deepcopy(job)
    job["metadata"].pop("creationTimestamp", None)
    job["spec"]["template"].get("metadata", {}).pop("creationTimestamp", None)
    job.pop("status", None)
    return job


def pod_env(container: dict[str, Any], maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The variables the container sees, as the kubelet resolves them: `env` wins over `envFrom`."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values.update(maps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            values[entry["name"]] = maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            values[entry["name"]] = "from-secret"
        else:
            values[entry["name"]] = entry["value"]
    return values


def station_of(job: Resource) -> str:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return str({e["name"]: e.get("value") for e in container["env"]}["DATASET_NAME"])


# -- a fake API server for the real kubectl ------------------------------------------------------


class FakeApiServer:
    """Just enough of the Kubernetes API for `create job --from`, `create -f -` and discovery."""

    def __init__(self, cronjob: Resource) -> None:
        cronjob = copy.deepcopy(cronjob)
        cronjob["metadata"]["uid"] = "00000000-0000-0000-0000-00000000c0de"
        self.created: list[Resource] = []
        batch = "/apis/batch/v1"
        jobs_path = f"{batch}/namespaces/{{namespace}}/jobs"
        self.routes: dict[str, Any] = {
            "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0"},
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
            "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": []},
            "/apis": {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": "batch",
                        "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"},
                    }
                ],
            },
            batch: {
                "kind": "APIResourceList",
                "groupVersion": "batch/v1",
                "resources": [
                    {
                        "name": "jobs",
                        "singularName": "job",
                        "namespaced": True,
                        "kind": "Job",
                        "verbs": ["create", "get"],
                    },
                    {
                        "name": "cronjobs",
                        "singularName": "cronjob",
                        "namespaced": True,
                        "kind": "CronJob",
                        "shortNames": ["cj"],
                        "verbs": ["get"],
                    },
                ],
            },
            f"{batch}/namespaces/flts/cronjobs/{cronjob['metadata']['name']}": cronjob,
            # kubectl validates server-side (fieldValidation=Strict) when the OpenAPI v3 document
            # says the endpoint takes the parameter; otherwise it wants the whole v2 schema.
            "/openapi/v3": {"paths": {"apis/batch/v1": {"serverRelativeURL": "/openapi/v3/apis/batch/v1"}}},
            "/openapi/v3/apis/batch/v1": {
                "openapi": "3.0.0",
                "info": {"title": "fake", "version": "v1.30.0"},
                "paths": {
                    jobs_path: {
                        "patch": {
                            "x-kubernetes-group-version-kind": {
                                "group": "batch",
                                "version": "v1",
                                "kind": "Job",
                            },
                            "parameters": [
                                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                            ],
                            "responses": {},
                        }
                    }
                },
            },
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in server.routes:
                    self._answer(200, server.routes[path])
                else:
                    self._answer(
                        404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
                    )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.split("?")[0] != f"{batch}/namespaces/flts/jobs":
                    self._answer(
                        404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
                    )
                    return
                server.created.append(body)
                self._answer(201, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def kubectl_env(server: FakeApiServer, home: Path) -> dict[str, str]:
    """An environment whose kubectl talks to `server` only (own kubeconfig and discovery cache)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    return {"PATH": os.environ["PATH"], "HOME": str(home), "KUBECONFIG": str(config), "LC_ALL": "C"}


def run_bash(args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def cronjob(rendered: list[Resource]) -> Resource:
    return find(rendered, "CronJob", "preprocess")


def trigger_with_kubectl(cronjob: Resource, home: Path, *args: str) -> list[Resource]:
    with FakeApiServer(cronjob) as server:
        result = run_bash([str(SCRIPT), *args], kubectl_env(server, home))
        assert result.returncode == 0, result.stderr
        return [normalized(job) for job in server.created]


@pytest.fixture(scope="module")
def fleet_jobs(cronjob: Resource, tmp_path_factory: pytest.TempPathFactory) -> list[Resource]:
    """The Jobs `.kubernetes/trigger.sh --all` creates."""
    if kubectl() is None:
        return [
            set_env(job_from_cronjob(cronjob, job_name(s, 0)), {"DATASET_NAME": s, "IDENTIFIER": s})
            for s in shipped_stations()
        ]
    return trigger_with_kubectl(cronjob, tmp_path_factory.mktemp("kubectl"), "--all")


# -- the station list --------------------------------------------------------------------------


def test_all_means_the_datasets_the_preprocess_image_ships() -> None:
    stations = shipped_stations()
    assert stations == ["ElBorn", "LesCorts", "PobleSec"]
    copies = [str(i) for i in final_stage("preprocess").all("COPY")]
    assert any("data/*.csv" in c and c.rstrip().endswith("/app/data/") for c in copies), copies
    # The script checks station names with the settings' own pattern, before any Job exists.
    [pattern] = [m.pattern for m in PreprocessSettings.model_fields["DATASET_NAME"].metadata]
    assert f"STATION_RE='{pattern}'" in SCRIPT.read_text()
    assert all(re.fullmatch(pattern, station) for station in stations)


def test_trigger_all_creates_one_job_per_shipped_station(fleet_jobs: list[Resource]) -> None:
    assert sorted(map(station_of, fleet_jobs)) == shipped_stations()
    names = [job["metadata"]["name"] for job in fleet_jobs]
    assert len(set(names)) == len(names)
    for job in fleet_jobs:
        name = job["metadata"]["name"]
        assert re.fullmatch(r"preprocess-[a-z0-9-]+-\d+", name) and len(name) <= 63, name
        assert name.startswith(f"preprocess-{station_of(job).lower()}-")


def test_cronjob_cleanup_leaves_fleet_runs_to_their_ttl(cronjob: Resource) -> None:
    """The CronJob controller deletes finished Jobs it owns beyond its history limits (defaults 3
    succeeded, 1 failed), suspended or not: a fleet run must not lose failed Jobs at once."""
    spec = cronjob["spec"]
    assert spec["suspend"] is True
    for limit in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        assert spec[limit] >= 10 * len(shipped_stations()), limit
    assert spec["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] > 0
    assert "app.kubernetes.io/managed-by" not in spec["jobTemplate"]["metadata"]["labels"]


# -- each generated Job ------------------------------------------------------------------------


def test_generated_job_differs_from_the_template_only_in_the_station(
    fleet_jobs: list[Resource], cronjob: Resource
) -> None:
    template = cronjob["spec"]["jobTemplate"]
    for job in fleet_jobs:
        station = station_of(job)
        spec = copy.deepcopy(job["spec"])
        [container] = spec["template"]["spec"]["containers"]
        *kept, dataset, identifier = container["env"]
        assert (dataset, identifier) == (
            {"name": "DATASET_NAME", "value": station},
            {"name": "IDENTIFIER", "value": station},
        )
        container["env"] = kept
        assert spec == template["spec"], f"{station}: the Job differs from the template beyond its env"
        meta = job["metadata"]
        assert meta["labels"] == template["metadata"]["labels"]
        [owner] = meta["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("CronJob", "preprocess", True)


def test_generated_jobs_validate_strictly_against_kubernetes_1_30(fleet_jobs: list[Resource]) -> None:
    for job in fleet_jobs:
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_station_env_wins_over_the_shared_config_map(
    fleet_jobs: list[Resource], rendered: list[Resource]
) -> None:
    """A station's run claims its own data under its own name whatever `preprocess-config` says."""
    maps = copy.deepcopy(config_maps(rendered))
    # Someone set the ConfigMap for a single run earlier: the fleet must not inherit it.
    maps["preprocess-config"].update(DATASET_NAME="PobleSec", IDENTIFIER="PobleSec")
    for job in fleet_jobs:
        [container] = job["spec"]["template"]["spec"]["containers"]
        settings = settings_from(PreprocessSettings, pod_env(container, maps))
        station = station_of(job)
        assert (settings.DATASET_NAME, settings.identifier) == (station, station)
        assert settings.train_object == f"{station}.csv" and settings.test_object == f"{station}_test.csv"


@pytest.mark.skipif(kubectl() is None, reason="kubectl not installed; the Python Jobs are used alone")
def test_python_jobs_match_kubectl(fleet_jobs: list[Resource], cronjob: Resource) -> None:
    for job in fleet_jobs:
        by_python = set_env(
            job_from_cronjob(
                {
                    **cronjob,
                    "metadata": {**cronjob["metadata"], "uid": job["metadata"]["ownerReferences"][0]["uid"]},
                },
                job["metadata"]["name"],
            ),
            {"DATASET_NAME": station_of(job), "IDENTIFIER": station_of(job)},
        )
        assert by_python == job


# -- retraining --------------------------------------------------------------------------------


def _hash(values: dict[str, str]) -> str:
    """The config hash the job computes for these settings over the shipped CSVs."""
    settings = settings_from(PreprocessSettings, values)
    digests = {
        key: content_digest((DATA_DIR / key).read_bytes())
        for key in (settings.train_object, settings.test_object)
    }
    return config_hash(
        hash_config(settings.DATASET_NAME, settings.options()), settings.EXTRA_HASH_SALT, digests
    )


def test_retrain_passes_its_settings_and_gets_a_new_config_hash(
    cronjob: Resource, rendered: list[Resource], tmp_path: Path
) -> None:
    if kubectl() is None:
        pairs = {"DATASET_NAME": "LesCorts", "IDENTIFIER": "LesCorts", "EXTRA_HASH_SALT": "retrain-2"}
        job = set_env(job_from_cronjob(cronjob, job_name("LesCorts", 0)), pairs)
    else:
        [job] = trigger_with_kubectl(cronjob, tmp_path, "LesCorts", "EXTRA_HASH_SALT=retrain-2")
    [container] = job["spec"]["template"]["spec"]["containers"]
    retrain = pod_env(container, config_maps(rendered))
    assert (retrain["DATASET_NAME"], retrain["EXTRA_HASH_SALT"]) == ("LesCorts", "retrain-2")
    values = {**retrain, "EXTRA_HASH_SALT": config_maps(rendered)["preprocess-config"]["EXTRA_HASH_SALT"]}
    assert _hash(values) == _hash(dict(values)), "same settings, same hash: the pipeline deduplicates"
    assert _hash(retrain) != _hash(values)
    # IDENTIFIER is not part of the hash; the dataset is.
    assert _hash({**values, "IDENTIFIER": "other"}) == _hash(values)
    assert _hash({**values, "DATASET_NAME": "ElBorn"}) != _hash(values)


# -- the script refuses what cannot work, before any Job exists --------------------------------


def stub_kubectl(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `kubectl` only records its arguments and passes stdin through."""
    log = tmp_path / "calls"
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncat\n')
    stub.chmod(0o755)
    return {"PATH": f"{stub.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}, log


def test_trigger_all_runs_the_pipeline_once_per_shipped_station(tmp_path: Path) -> None:
    """The script's own station list and command lines, without a kubectl or a cluster."""
    env, log = stub_kubectl(tmp_path)
    result = run_bash([str(SCRIPT), "--all", "SAMPLE_TRAIN_ROWS=500"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The stages of one pipeline start together, so their calls are logged in any order.
    calls = sorted(log.read_text().splitlines())
    creates = [c for c in calls if " create job " in c]
    set_envs = [c for c in calls if c.startswith("set env ")]
    assert calls.count("-n flts create -f -") == len(creates) == len(set_envs) == len(shipped_stations())
    assert len(calls) == 3 * len(shipped_stations())
    for station in shipped_stations():
        name = rf"preprocess-{station.lower()}-\d+"
        pattern = rf"-n flts create job {name} --from=cronjob/preprocess --dry-run=client -o yaml"
        assert sum(bool(re.fullmatch(pattern, c)) for c in creates) == 1, (station, creates)
        pairs = f"DATASET_NAME={station} IDENTIFIER={station} SAMPLE_TRAIN_ROWS=500"
        assert f"set env --local -f - {pairs} -o yaml" in set_envs


@pytest.mark.parametrize(
    "args",
    [[], ["not a station"], ["-bad"], ["LesCorts", "DATASET_NAME=ElBorn"], ["--all", "LesCorts"], ["x" * 42]],
    ids=["nothing", "space", "leading-dash", "station-as-setting", "all-and-a-name", "too-long"],
)
def test_trigger_refuses_bad_arguments_without_calling_kubectl(args: list[str], tmp_path: Path) -> None:
    env, log = stub_kubectl(tmp_path)
    result = run_bash([str(SCRIPT), *args], env)
    assert result.returncode == 2, result.stderr
    assert not log.exists()


def test_trigger_script_is_executable_bash() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


# -- the documentation -------------------------------------------------------------------------


def fleet_section() -> str:
    text = DOCS.read_text()
    start = text.index(FLEET_HEADING)
    end = text.find("\n## ", start + len(FLEET_HEADING))
    return text[start : end if end != -1 else None]


def fleet_code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", fleet_section(), flags=re.S)


KIND_ALIASES = {
    "cronjob": "CronJob",
    "cj": "CronJob",
    "deploy": "Deployment",
    "deployment": "Deployment",
    "configmap": "ConfigMap",
    "cm": "ConfigMap",
    "svc": "Service",
    "statefulset": "StatefulSet",
    "sts": "StatefulSet",
}


def test_docs_fleet_section_documents_both_commands_adding_and_retraining() -> None:
    section = fleet_section()
    code = "\n".join(fleet_code_blocks())
    assert re.search(r"^\.kubernetes/trigger\.sh LesCorts\s", code, flags=re.M)
    assert re.search(r"^\.kubernetes/trigger\.sh --all\s", code, flags=re.M)
    assert re.search(r"^\.kubernetes/trigger\.sh LesCorts EXTRA_HASH_SALT=", code, flags=re.M)
    for topic in ("### Add a station", "### Retrain a station", "### What to watch"):
        assert topic in section, topic


def test_docs_fleet_commands_reference_resources_that_exist(rendered: list[Resource]) -> None:
    existing = {(r["kind"], r["metadata"]["name"]) for r in rendered}
    labels = [r["metadata"].get("labels", {}) for r in rendered]
    labels += [r["spec"]["jobTemplate"]["metadata"]["labels"] for r in rendered if r["kind"] == "CronJob"]
    code = "\n".join(fleet_code_blocks())
    references = re.findall(r"\b(" + "|".join(KIND_ALIASES) + r")/([a-z0-9][a-z0-9-]*)", code)
    assert ("cronjob", "preprocess") in references
    for alias, name in references:
        assert (KIND_ALIASES[alias], name) in existing, f"{alias}/{name} is not in the kustomization"
    for key, value in re.findall(r"-l ([\w./-]+)=([\w.-]+)", code):
        assert any(found.get(key) == value for found in labels), f"nothing is labelled {key}={value}"
    for path in re.findall(r"(\.kubernetes/[\w./-]+)", code):
        assert (REPO_ROOT / path).exists(), path


def documented_block(marker: str) -> str:
    [block] = [b for b in fleet_code_blocks() if marker in b]
    return block


@pytest.mark.skipif(kubectl() is None, reason="the documented commands need kubectl")
@pytest.mark.parametrize(
    ("marker", "expected"),
    [("s=LesCorts", ["LesCorts"]), ("for f in data/", shipped_stations())],
    ids=["one-station", "all-stations"],
)
def test_documented_plain_kubectl_commands_create_the_station_jobs(
    marker: str, expected: list[str], cronjob: Resource, tmp_path: Path
) -> None:
    """The commands as typed in the docs, run by bash from the repository root."""
    with FakeApiServer(cronjob) as server:
        result = run_bash(["-euo", "pipefail", "-c", documented_block(marker)], kubectl_env(server, tmp_path))
        assert result.returncode == 0, result.stderr
        created = [normalized(job) for job in server.created]
    assert sorted(map(station_of, created)) == expected
    by_script = trigger_with_kubectl(cronjob, tmp_path / "script", *expected)
    for documented, scripted in zip(
        sorted(created, key=station_of), sorted(by_script, key=station_of), strict=True
    ):
        assert documented["spec"] == scripted["spec"]
