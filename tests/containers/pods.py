"""Run a manifest's container with Docker the way its pod runs it.

What is taken from the rendered manifest: the image, `command`/`args`, the names of every
environment variable, the container's securityContext (read-only root filesystem, dropped
capabilities, no privilege escalation), the pod's user and group, and its emptyDir mounts (the
only writable paths, as tmpfs). What changes: the values that name cluster addresses or secrets
(ConfigMap and Secret references, resolved against the local stack) and listening ports, remapped
to free ones because every container shares the host's network here (no bridge on these machines).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.k8s.manifests import Workload

# Environment variables whose manifest value is a port the container listens on.
LISTEN_PORT_VARIABLES = ("INFERENCE_PORT", "HEALTH_PORT")


class UnresolvedVariable(LookupError):
    """A manifest variable comes from a ConfigMap key or Secret this test does not know how to map."""


@dataclass
class PodContainer:
    """One container of a workload, resolved to a `docker run` command line."""

    workload: str
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    docker_options: list[str] = field(default_factory=list)

    @classmethod
    def from_workload(
        cls,
        workload: Workload,
        *,
        config_maps: Mapping[str, Mapping[str, str]],
        local: Mapping[str, str],
        secrets: Mapping[str, str],
        ports: Mapping[str, int] | None = None,
        container_name: str | None = None,
    ) -> PodContainer:
        """`config_maps` are the rendered ConfigMaps; `local` replaces the values of their keys that
        name cluster addresses; `secrets` maps Secret-fed variable names to local values; `ports`
        gives the free port for each listening-port variable."""
        pod = workload.pod_spec
        [container] = [
            c for c in workload.containers if container_name is None or c["name"] == container_name
        ]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is None:
                raise UnresolvedVariable(f"envFrom {source}: only ConfigMaps have local stand-ins")
            for key, value in config_maps[ref["name"]].items():
                env[key] = local.get(key, value)
        configs = {
            name: {**data, **{k: v for k, v in local.items() if k in data}}
            for name, data in config_maps.items()
        }
        for entry in container.get("env", []):
            env[entry["name"]] = _resolve(entry, configs, secrets, ports or {})
        return cls(
            workload=workload.name,
            image=container["image"],
            command=list(container.get("command", [])),
            args=list(container.get("args", [])),
            env=env,
            docker_options=_security_options(pod, container),
        )

    def run_argv(self, name: str, *, detach: bool, extra_args: list[str] | None = None) -> list[str]:
        argv = ["docker", "run", "--name", name, "--network", "host", *self.docker_options]
        argv.append("--detach" if detach else "--rm")
        for key, value in self.env.items():
            argv += ["--env", f"{key}={value}"]
        if self.command:
            argv += ["--entrypoint", self.command[0]]
        argv.append(self.image)
        argv += self.command[1:] + self.args + (extra_args or [])
        return argv


def _resolve(
    entry: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, str],
    ports: Mapping[str, int],
) -> str:
    name = entry["name"]
    if name in ports:
        return str(ports[name])
    if "value" in entry:
        return str(entry["value"])
    source = entry.get("valueFrom", {})
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        value = config_maps.get(ref["name"], {}).get(ref["key"])
        if value is None:
            raise UnresolvedVariable(f"{name}: ConfigMap {ref['name']} has no key {ref['key']}")
        return value
    if "secretKeyRef" in source:
        if name not in secrets:
            raise UnresolvedVariable(f"{name}: Secret-fed variable has no local value")
        return secrets[name]
    raise UnresolvedVariable(f"{name}: unsupported source {source}")


def _security_options(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    options: list[str] = []
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    group = security.get("runAsGroup", pod_security.get("runAsGroup", user))
    if user is not None:
        options += ["--user", f"{user}:{group}"]
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    for capability in security.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise UnresolvedVariable(f"volume {mount['name']} is not an emptyDir: no local stand-in")
        # An emptyDir is writable by the pod's user; tmpfs with the sticky world-writable mode is.
        options += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777"]
    return options


def unique_container_name(workload: str) -> str:
    return f"flts-test-{workload}-{uuid.uuid4().hex[:8]}"


def docker(*args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=check)
