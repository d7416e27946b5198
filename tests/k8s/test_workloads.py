"""Every workload is hardened, probed, sized and labelled; the inference API scales."""

from __future__ import annotations

import pytest

from tests.k8s.dockerfiles import DOCKERFILES, image_stages
from tests.k8s.manifests import (
    LONG_RUNNING_KINDS,
    REPO_ROOT,
    Resource,
    Workload,
    find,
    workloads,
)

LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
TRAINERS = ("train-gru", "train-lstm", "train-prophet")


@pytest.fixture(scope="module")
def all_workloads(rendered: list[Resource]) -> list[Workload]:
    found = workloads(rendered)
    assert {w.name for w in found} >= {
        "kafka",
        "minio",
        "postgres",
        "mlflow",
        "preprocess",
        *TRAINERS,
        "evaluator",
        "inference",
        "locust-master",
        "locust-worker",
    }
    return found


def test_every_workload_and_its_pods_carry_the_recommended_labels(all_workloads: list[Workload]) -> None:
    for workload in all_workloads:
        for where, labels in (
            ("metadata", workload.resource["metadata"].get("labels", {})),
            ("pod template", workload.template["metadata"].get("labels", {})),
        ):
            missing = [key for key in LABELS if not labels.get(key)]
            assert not missing, f"{workload} {where} lacks {missing}"
            assert labels["app.kubernetes.io/part-of"] == "flts"


def test_selectors_match_their_pod_templates(all_workloads: list[Workload]) -> None:
    for workload in all_workloads:
        selector = workload.resource["spec"].get("selector", {}).get("matchLabels")
        if workload.kind in LONG_RUNNING_KINDS:
            assert selector, f"{workload} has no selector"
        labels = workload.template["metadata"]["labels"]
        for key, value in (selector or {}).items():
            assert labels.get(key) == value, f"{workload}: selector {key}={value} does not select its pods"


def test_long_running_containers_have_readiness_and_liveness_probes(all_workloads: list[Workload]) -> None:
    for workload in all_workloads:
        if workload.kind not in LONG_RUNNING_KINDS:
            continue
        for container in workload.containers:
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{workload} container {container['name']} lacks {probe}"


def test_every_container_has_cpu_and_memory_requests_and_limits(all_workloads: list[Workload]) -> None:
    for workload in all_workloads:
        for container in workload.all_containers:
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert set(resources.get(bound, {})) >= {"cpu", "memory"}, (
                    f"{workload} container {container['name']} lacks {bound}"
                )


def test_pods_run_as_non_root_without_privileges_on_a_read_only_root(all_workloads: list[Workload]) -> None:
    for workload in all_workloads:
        pod = workload.pod_spec
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, f"{workload} may run as root"
        assert isinstance(pod_context.get("runAsUser"), int) and pod_context["runAsUser"] > 0, str(workload)
        assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault", str(workload)
        assert pod.get("automountServiceAccountToken") is False, f"{workload} mounts an API token"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in workload.all_containers:
            context = container.get("securityContext", {})
            label = f"{workload} container {container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, label
            assert context.get("readOnlyRootFilesystem") is True, label
            assert context.get("capabilities", {}).get("drop") == ["ALL"], label
            assert not context.get("capabilities", {}).get("add"), label
            assert not context.get("privileged"), label
            if container in workload.containers:
                tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                assert tmp, f"{label} has no writable /tmp"
                assert "emptyDir" in volumes[tmp[0]["name"]], f"{label}: /tmp is not an emptyDir"


def test_namespace_enforces_the_restricted_pod_security_standard(
    rendered: list[Resource], all_workloads: list[Workload]
) -> None:
    labels = find(rendered, "Namespace", "flts")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # What the checks above do not cover of "restricted": volume types and host namespaces.
    allowed = {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected", "downwardAPI"}
    for workload in all_workloads:
        pod = workload.pod_spec
        for volume in pod.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= allowed, f"{workload}: volume {volume['name']} is {kinds}"
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), str(workload)
        for container in workload.all_containers:
            assert not any("hostPort" in p for p in container.get("ports", [])), str(workload)


def test_each_workload_has_its_own_service_account(
    rendered: list[Resource], all_workloads: list[Workload]
) -> None:
    accounts = {r["metadata"]["name"]: r for r in rendered if r["kind"] == "ServiceAccount"}
    for workload in all_workloads:
        name = workload.pod_spec.get("serviceAccountName")
        assert name and name != "default", f"{workload} uses the default service account"
        assert name in accounts, f"{workload}: ServiceAccount {name} is not defined"
        assert accounts[name].get("automountServiceAccountToken") is False, name


def test_grace_periods_match_the_work(all_workloads: list[Workload]) -> None:
    from nonml_container.settings import ProphetSettings
    from train_container.settings import TrainSettings

    grace = {w.name: w.pod_spec.get("terminationGracePeriodSeconds", 30) for w in all_workloads}
    # SIGTERM finishes the message in hand: the longest training the settings allow, then MLflow
    # logging and the commit.
    longest_fit = TrainSettings.model_fields["MAX_TRAIN_SECONDS"].default
    assert grace["train-gru"] >= max(600, 2 * longest_fit)
    assert grace["train-lstm"] >= max(600, 2 * longest_fit)
    assert grace["train-prophet"] >= ProphetSettings.model_fields["PROPHET_FIT_TIMEOUT_S"].default + 60
    assert grace["inference"] <= 60


def test_images_are_built_by_a_dockerfile_of_this_repository_or_pinned(
    all_workloads: list[Workload],
) -> None:
    for workload in all_workloads:
        for container in workload.all_containers:
            image = container["image"]
            name, _, tag = image.partition(":")
            assert tag and tag != "latest", f"{workload}: {image} is not pinned"
            if name.startswith("flts/"):
                dockerfile = DOCKERFILES[name.removeprefix("flts/")]
                assert dockerfile.is_file(), image
                image_stages(name.removeprefix("flts/"))


def test_hpa_scales_the_inference_deployment_on_cpu(rendered: list[Resource]) -> None:
    hpa = find(rendered, "HorizontalPodAutoscaler", "inference")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    deployment = find(rendered, "Deployment", target["name"])
    assert deployment["metadata"]["name"] == "inference"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 20)
    [metric] = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    # Utilisation is measured against the request: without one the HPA never scales.
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]


def test_pdb_protects_the_inference_pods_without_blocking_drains(rendered: list[Resource]) -> None:
    pdb = find(rendered, "PodDisruptionBudget", "inference")
    labels = find(rendered, "Deployment", "inference")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert pdb["spec"]["minAvailable"] >= 1
    # Before the first promotion no inference pod is ready; with the default policy
    # (IfHealthyBudget) the budget would then block every node drain.
    assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_services_select_pods_and_target_ports_those_pods_declare(
    rendered: list[Resource], all_workloads: list[Workload]
) -> None:
    for service in (r for r in rendered if r["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in all_workloads
            if all(w.template["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        name = service["metadata"]["name"]
        assert matches, f"Service {name} selects no pods"
        assert all(w.kind in LONG_RUNNING_KINDS for w in matches), f"Service {name} fronts a Job"
        for port in service["spec"]["ports"]:
            declared = {
                p.get("name"): p["containerPort"]
                for w in matches
                for c in w.containers
                for p in c.get("ports", [])
            }
            target = port["targetPort"]
            assert target in declared or target in declared.values(), f"{name}: no container port {target}"


def test_locust_web_ui_is_on_node_port_30089(rendered: list[Resource]) -> None:
    service = find(rendered, "Service", "locust-web")
    assert service["spec"]["type"] == "NodePort"
    [port] = service["spec"]["ports"]
    assert (port["port"], port["nodePort"]) == (8089, 30089)
    master = find(rendered, "Deployment", "locust-master")
    assert "--master" in master["spec"]["template"]["spec"]["containers"][0]["args"]
    worker = find(rendered, "Deployment", "locust-worker")
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--master-host") + 1] == "locust-master"


def test_preprocess_runs_take_their_settings_from_the_config_map(rendered: list[Resource]) -> None:
    cron = find(rendered, "CronJob", "preprocess")
    assert cron["spec"]["suspend"] is True, "the CronJob is only the template of manual runs"
    template = Workload(cron)
    [container] = template.containers
    assert container["envFrom"] == [{"configMapRef": {"name": "preprocess-config"}}]
    data = find(rendered, "ConfigMap", "preprocess-config")["data"]
    assert {"DATASET_NAME", "EXTRA_HASH_SALT"} <= set(data)
    assert any(key.startswith("SAMPLE_") for key in data)
    assert template.pod_spec["restartPolicy"] == "Never"


def test_preprocess_retries_crashes_and_fails_at_once_on_permanent_exit_codes(
    rendered: list[Resource],
) -> None:
    """Exit 2 (invalid settings) and 10 (input refused) fail the Job; 1 (a crash) and 3
    (infrastructure unreachable) count toward backoffLimit and are retried."""
    from preprocess_container.job import EXIT_INFRA, EXIT_INVALID_SETTINGS, EXIT_REFUSED

    spec = find(rendered, "CronJob", "preprocess")["spec"]["jobTemplate"]["spec"]
    [rule] = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    codes = rule["onExitCodes"]
    assert (codes["containerName"], codes["operator"]) == ("preprocess", "In")
    assert sorted(codes["values"]) == sorted([EXIT_INVALID_SETTINGS, EXIT_REFUSED]) == [2, 10]
    assert 1 not in codes["values"] and EXIT_INFRA not in codes["values"]
    assert spec["backoffLimit"] >= 3


def test_locust_users_reconnect_so_replicas_the_hpa_adds_get_traffic(rendered: list[Resource]) -> None:
    """A Service balances connections, not requests: users that kept theirs for a whole swarm
    would leave new inference replicas idle. The workers (where the users run) set the interval
    the locustfile reads, and a positive one."""
    [container] = Workload(find(rendered, "Deployment", "locust-worker")).containers
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert 0 < float(env["LOCUST_RECONNECT_S"]) <= 30, "a swarm must reach new replicas within seconds"
    locustfile = (REPO_ROOT / "locust" / "locustfile.py").read_text()
    assert '_env("LOCUST_RECONNECT_S"' in locustfile, "the locustfile no longer reads LOCUST_RECONNECT_S"
