"""The kind quickstart of docs/KUBERNETES.md, checked as far as it can be without a cluster.

Its code blocks run as written, by bash from the repository root, with stand-ins for `kind`,
`kubectl`, `make`, `docker` and `curl` that record their arguments (and the body a curl posts).
What they were asked is then checked against the repository: the kustomization applied exists,
renders and validates; the images loaded are the ones `make images` builds, with the same tag;
port-forwards reach real Service ports and every localhost URL a forwarded port; every resource
and label named exists; the station is one the image ships; the forecast request is one the
inference service accepts. The doc lists what only a cluster shows.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.k8s.manifests import KUSTOMIZE_DIR, REPO_ROOT, Resource, Workload, find
from tests.k8s.test_reapply import built_images, render
from tests.k8s.test_schema import assert_valid

DOCS = REPO_ROOT / "docs" / "KUBERNETES.md"
HEADING = "## Quickstart on kind"
STANDINS = ("kind", "kubectl", "make", "docker", "curl")
# POSIX sh, not Python: a few dozen calls stay fast on a busy machine. One record per call:
# tool, argument count, the arguments, and the file a curl posted (copied), NUL-separated.
RECORDER = r"""#!/bin/sh
tool=$(basename "$0")
posted=
if [ "$tool" = curl ]; then
    previous=
    for argument in "$@"; do
        case "$previous" in
            --data | -d | --data-binary)
                case "$argument" in
                    @*) posted=$(mktemp "$QUICKSTART_RECORD.posted.XXXXXX") && cp "${argument#@}" "$posted" ;;
                esac ;;
        esac
        previous=$argument
    done
fi
{ printf '%s\0' "$tool" "$#"; printf '%s\0' "$@"; printf '%s\0' "$posted"; } >>"$QUICKSTART_RECORD"
"""
# kubectl's short names for the kinds the quickstart names.
KINDS = {
    "statefulset": "StatefulSet",
    "sts": "StatefulSet",
    "deployment": "Deployment",
    "deploy": "Deployment",
    "svc": "Service",
    "service": "Service",
    "cronjob": "CronJob",
    "hpa": "HorizontalPodAutoscaler",
    "pod": "Pod",
    "job": "Job",
}


def section() -> str:
    text = DOCS.read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start : end if end != -1 else None]


def blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section(), flags=re.S)


@dataclass
class Call:
    tool: str
    argv: list[str]
    posted: str | None = None

    def option(self, name: str) -> str | None:
        for i, arg in enumerate(self.argv):
            if arg == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None

    @property
    def words(self) -> list[str]:
        """The arguments without `-n <namespace>`."""
        words, skip = [], False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg == "-n":
                skip = True
            else:
                words.append(arg)
        return words


@dataclass
class Quickstart:
    calls: list[Call]
    results: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def of(self, tool: str, *verbs: str) -> list[Call]:
        return [c for c in self.calls if c.tool == tool and c.words[: len(verbs)] == list(verbs)]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Quickstart:
    root = tmp_path_factory.mktemp("quickstart")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for tool in STANDINS:
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    record = root / "calls.jsonl"
    record.touch()
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(root),
        "QUICKSTART_RECORD": str(record),
    }
    results = [
        subprocess.run(
            ["bash", "-eo", "pipefail", "-c", block],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for block in blocks()
    ]
    return Quickstart(read_calls(record), results)


def read_calls(record: Path) -> list[Call]:
    fields = record.read_bytes().decode().split("\0")
    calls: list[Call] = []
    i = 0
    while i < len(fields) - 1:
        tool, count = fields[i], int(fields[i + 1])
        argv = fields[i + 2 : i + 2 + count]
        posted = fields[i + 2 + count]
        calls.append(Call(tool, argv, Path(posted).read_text() if posted else None))
        i += 3 + count
    return calls


@pytest.fixture(scope="module")
def deployed(quickstart: Quickstart) -> list[Resource]:
    """What the quickstart applies: its one `kubectl apply -k` of a kustomization here."""
    [apply] = [c for c in quickstart.of("kubectl", "apply") if c.option("-k")]
    directory = REPO_ROOT / str(apply.option("-k"))
    assert (directory / "kustomization.yaml").is_file(), directory
    assert KUSTOMIZE_DIR in directory.resolve().parents or directory.resolve() == KUSTOMIZE_DIR
    return render(directory)


def test_every_block_runs_as_written(quickstart: Quickstart) -> None:
    assert len(quickstart.results) >= 7
    for block, result in zip(blocks(), quickstart.results, strict=True):
        assert result.returncode == 0, f"{block}\n{result.stderr[-2000:]}"
    assert {c.tool for c in quickstart.calls} == set(STANDINS)


def test_the_kustomization_applied_renders_and_validates(deployed: list[Resource]) -> None:
    assert_valid(deployed)
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= {
        r["kind"] for r in deployed
    }


def test_every_repository_file_named_exists() -> None:
    code = "\n".join(blocks())
    for path in re.findall(r"(?<![\w/.:-])((?:\.kubernetes|data|docker|docs)/[\w./-]+)", code):
        assert (REPO_ROOT / path).exists(), path


def test_the_images_loaded_are_the_images_make_images_builds(quickstart: Quickstart) -> None:
    [create] = quickstart.of("kind", "create", "cluster")
    cluster = create.option("--name")
    loads = quickstart.of("kind", "load", "docker-image")
    assert loads and all(c.option("--name") == cluster for c in loads), "images loaded into another cluster"
    loaded = sorted(c.words[2] for c in loads)
    assert loaded == built_images(), "loaded and built differ (name or tag)"
    [delete] = quickstart.of("kind", "delete", "cluster")
    assert delete.option("--name") == cluster


def test_make_images_builds_from_the_base_image_pulled_first(quickstart: Quickstart) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    for call in quickstart.of("make"):
        for target in call.words:
            recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
            assert recipe, f"make {target}: no such target"
    [build] = quickstart.of("make", "images")
    images = re.search(r"^images:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert images and "docker/images.sh" in images.group(1)
    [pull] = quickstart.of("docker", "pull")
    default = re.search(
        r'BASE_IMAGE="\$\{BASE_IMAGE:-([^}]+)\}"', (REPO_ROOT / "docker/images.sh").read_text()
    )
    assert default and pull.words[1] == default.group(1)
    assert quickstart.calls.index(pull) < quickstart.calls.index(build)


def _resource_references(call: Call) -> Iterator[tuple[str, str]]:
    words = call.words
    for word in words:
        match = re.fullmatch(r"([a-z]+)/([a-z0-9][a-z0-9.-]*)", word)
        if match and match.group(1) in KINDS:
            yield KINDS[match.group(1)], match.group(2)
    if words[:1] == ["get"] and len(words) >= 3 and words[1] in KINDS and not words[2].startswith("-"):
        yield KINDS[words[1]], words[2]


def _labels(deployed: list[Resource]) -> list[dict[str, str]]:
    labels = [r["metadata"].get("labels", {}) for r in deployed]
    for resource in deployed:
        if resource["kind"] in ("Deployment", "StatefulSet", "CronJob"):
            labels.append(Workload(resource).template["metadata"].get("labels", {}))
        if resource["kind"] == "CronJob":
            labels.append(resource["spec"]["jobTemplate"]["metadata"].get("labels", {}))
    return labels


def test_every_resource_and_label_named_exists_in_the_namespace(
    quickstart: Quickstart, deployed: list[Resource]
) -> None:
    namespaces = {r["metadata"].get("namespace") for r in deployed if r["kind"] != "Namespace"}
    assert namespaces == {"flts"}
    existing = {(r["kind"], r["metadata"]["name"]) for r in deployed}
    labels = _labels(deployed)
    checked = 0
    for call in quickstart.of("kubectl"):
        namespace = call.option("-n")
        if namespace == "kube-system":
            continue  # metrics-server, installed from its own release
        if namespace is None:
            # `apply` of a kustomization sets its own namespace; `set env --local` only edits YAML.
            assert call.words[0] == "apply" or "--local" in call.words, f"kubectl {call.argv}: no namespace"
            continue
        assert namespace == "flts", call.argv
        for kind, name in _resource_references(call):
            if kind in ("Pod", "Job"):
                continue  # made at run time (pods of the workloads, the station's Job)
            checked += 1
            assert (kind, name) in existing, f"kubectl {' '.join(call.argv)}: no {kind}/{name}"
        selector = call.option("-l")
        if selector:
            key, _, value = selector.partition("=")
            assert any(found.get(key) == value for found in labels), f"nothing is labelled {selector}"
    assert checked >= 10


def test_rollouts_waited_for_can_finish_before_any_promotion(quickstart: Quickstart) -> None:
    """The inference pods turn ready only with a promoted model; waiting for their rollout
    before a station is trained would wait forever."""
    trigger = next(i for i, c in enumerate(quickstart.calls) if c.words[:2] == ["create", "job"])
    for call in quickstart.calls[:trigger]:
        if call.words[:2] == ["rollout", "status"]:
            assert call.words[2] != "deployment/inference", "waits for a model before any training"


def test_the_station_triggered_is_one_the_preprocess_image_ships(quickstart: Quickstart) -> None:
    stations = re.findall(r"^\.kubernetes/trigger\.sh (\w+)\s*$", "\n".join(blocks()), flags=re.M)
    assert stations
    for station in stations:
        assert (REPO_ROOT / "data" / f"{station}.csv").is_file()
        assert (REPO_ROOT / "data" / f"{station}_test.csv").is_file()
    # trigger.sh ran with the stand-in: one Job from the CronJob template, the station in its env.
    [job] = quickstart.of("kubectl", "create", "job")
    assert job.option("--from") == "cronjob/preprocess"
    [set_env] = quickstart.of("kubectl", "set", "env")
    assert {f"DATASET_NAME={stations[0]}", f"IDENTIFIER={stations[0]}"} <= set(set_env.words)


def _forwards(quickstart: Quickstart, deployed: list[Resource]) -> dict[int, Resource]:
    """Local port → the Service a `kubectl port-forward svc/NAME LOCAL:REMOTE` reaches."""
    forwards: dict[int, Resource] = {}
    for call in quickstart.of("kubectl", "port-forward"):
        target, ports = call.words[1], call.words[2]
        kind, _, name = target.partition("/")
        assert kind == "svc", f"port-forward {target}: forward to the Service"
        service = find(deployed, "Service", name)
        local, _, remote = ports.partition(":")
        offered = {p["port"] for p in service["spec"]["ports"]} | {
            p.get("name") for p in service["spec"]["ports"]
        }
        assert int(remote) in offered or remote in offered, f"Service {name} has no port {remote}"
        forwards[int(local)] = service
    return forwards


def test_every_port_forward_reaches_a_service_port_and_every_url_a_forward(
    quickstart: Quickstart, deployed: list[Resource]
) -> None:
    forwards = _forwards(quickstart, deployed)
    assert {s["metadata"]["name"] for s in forwards.values()} >= {"inference", "mlflow", "locust-web"}
    urls = [arg for call in quickstart.of("curl") for arg in call.words if "localhost" in arg]
    urls += re.findall(r"https?://localhost:\d+\S*", section())
    assert urls
    served = {
        "inference": ("/model", "/predict"),
        "locust-web": ("/", "/swarm", "/stop"),
        "mlflow": ("/",),
    }
    for url in urls:
        match = re.search(r"localhost:(\d+)(\S*)", url)
        assert match and int(match.group(1)) in forwards, f"{url}: no port-forward to it"
        path = "/" + match.group(2).lstrip("/").rstrip(").,")
        service = forwards[int(match.group(1))]["metadata"]["name"]
        assert path in served[service], f"{url}: {service} has no {path} here"


def test_mlflow_admits_the_host_name_of_each_forward(
    quickstart: Quickstart, deployed: list[Resource]
) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    [container] = Workload(find(deployed, "Deployment", "mlflow")).containers
    [allowed] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--allowed-hosts=")]
    forwards = _forwards(quickstart, deployed)
    ports = [port for port, service in forwards.items() if service["metadata"]["name"] == "mlflow"]
    assert ports
    for port in ports:
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert is_allowed_host_header(allowed.split(","), host), f"MLflow would answer 403 to {host}"


def test_the_forecast_request_is_one_the_inference_service_accepts(quickstart: Quickstart) -> None:
    from inference_container.validation import Limits, parse_json, parse_predict_request
    from preprocess_container.settings import PreprocessSettings
    from shared.data import KPI_COLUMNS
    from shared.model_runtime.ranges import KpiRanges

    [post] = [c for c in quickstart.of("curl") if any(w.endswith("/predict") for w in c.words)]
    assert post.posted, "the request body was not posted"
    payload = parse_json(post.posted.encode())
    window = PreprocessSettings.model_fields["INPUT_SEQ_LEN"].default
    columns = tuple(KPI_COLUMNS)
    limits = Limits(
        input_seq_len=window,
        step=np.timedelta64(2, "m"),
        max_rows=5000,
        max_inference_length=720,
        ranges=KpiRanges(columns, np.zeros(len(columns)), np.full(len(columns), np.inf)),
    )
    request = parse_predict_request(payload, limits)
    assert request.kpis.shape == (window, len(columns))
    assert request.inference_length == 3
    stations = re.findall(r"^\.kubernetes/trigger\.sh (\w+)\s*$", "\n".join(blocks()), flags=re.M)
    assert payload["identifier"] in stations, "the forecast asks for a station the quickstart never trained"


def test_the_stand_ins_record_what_they_are_asked(tmp_path: Path) -> None:
    """The checks above can fail: a recorded call is exactly its arguments."""
    script = tmp_path / "kubectl"
    script.write_text(RECORDER)
    script.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    env: dict[str, Any] = {"PATH": f"{tmp_path}:/usr/bin:/bin", "QUICKSTART_RECORD": str(record)}
    body = tmp_path / "body.json"
    body.write_text('{"a": "b c"}')
    (tmp_path / "curl").write_text(RECORDER)
    (tmp_path / "curl").chmod(0o755)
    command = f"kubectl -n flts logs -f deployment/nope 'two words' ''; curl -s --data @{body} localhost:1/x"
    subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
    logs, curl = read_calls(record)
    assert logs.words == ["logs", "-f", "deployment/nope", "two words", ""] and logs.posted is None
    assert list(_resource_references(logs)) == [("Deployment", "nope")]
    assert (curl.tool, curl.argv[-1], curl.posted) == ("curl", "localhost:1/x", '{"a": "b c"}')
