"""The layout rule, checked on the imports of the source tree (parsed with `ast`, nothing imported).

A module that one service uses lives in that service's package. shared/ keeps what two or more
services use, or a service and the CLI (flts_cli); bench/ and tests/ don't count as users; a
module imported only by another shared module counts as used by that module's users. A service
never imports another service, and nothing outside tests/ imports from tests/.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.repo_files import REPO_ROOT, files_git_would_commit

# The services, by their folder. locust/ holds the load-test service (locustfile.py); it is no
# importable package: `import locust` names the Locust library, never this folder.
SERVICES = (
    "preprocess_container",
    "train_container",
    "nonml_container",
    "eval_container",
    "inference_container",
    "batch_container",
    "locust",
)
SERVICE_PACKAGES = frozenset(SERVICES) - {"locust"}
CLI = "flts_cli"
SHARED = "shared"

# Shared modules kept in shared/ whatever the imports say, each with its reason.
ALLOWED = {
    "shared.model_runtime": (
        "the model runtime: MLflow models load it too (as their code), a user no import shows"
    ),
}
# Shared modules no import reaches because something runs them from their path, with the reason.
RUN_BY_PATH = {
    "shared.model_runtime.mlflow_model": "MLflow executes it to build a model (models from code)",
}


@dataclass(frozen=True)
class SourceFile:
    path: Path  # relative to the repository root
    module: str  # dotted name; a package's __init__.py is the package itself

    @property
    def top(self) -> str:
        return self.path.parts[0]

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def source_files() -> tuple[SourceFile, ...]:
    files = [Path(p) for p in files_git_would_commit() if p.endswith(".py")]
    return tuple(SourceFile(p, module_name(p)) for p in sorted(files))


@functools.cache
def shared_modules() -> frozenset[str]:
    return frozenset(f.module for f in source_files() if f.top == SHARED and f.module != SHARED)


def _absolute(node: ast.ImportFrom, source: SourceFile) -> str:
    """The module a `from ... import` names, with relative imports resolved against `source`."""
    if node.level == 0:
        return node.module or ""
    package = source.module.split(".")
    if not source.is_package:
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(source: SourceFile) -> Iterator[str]:
    """Every module `source` imports, anywhere in the file (functions and TYPE_CHECKING blocks too).

    `import a.b` names a.b; `from a.b import c` names the module a.b.c when that is a shared
    module, else a.b (c is then something a.b defines)."""
    tree = ast.parse((REPO_ROOT / source.path).read_text(), filename=str(source.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, source)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in shared_modules() else base


@functools.cache
def imports() -> dict[SourceFile, frozenset[str]]:
    return {source: frozenset(imported_modules(source)) for source in source_files()}


def _user(source: SourceFile) -> str | None:
    """Who `source` counts as when it imports a shared module: a service, the CLI, or nobody."""
    return source.top if source.top in (*SERVICES, CLI) else None


@functools.cache
def users() -> dict[str, frozenset[str]]:
    """Every shared module -> the services and CLI that use it, directly or through other shared
    modules (a module imported by a shared module is used by that module's users)."""
    found: dict[str, set[str]] = {module: set() for module in shared_modules()}
    importers: dict[str, set[str]] = {module: set() for module in shared_modules()}
    for source, names in imports().items():
        for name in names & shared_modules():
            user = _user(source)
            if user is not None:
                found[name].add(user)
            elif source.top == SHARED and source.module != name:
                importers[name].add(source.module)
    changed = True
    while changed:
        changed = False
        for module, modules_importing_it in importers.items():
            inherited = set().union(*(found[m] for m in modules_importing_it)) - found[module]
            if inherited:
                found[module] |= inherited
                changed = True
    return {module: frozenset(names) for module, names in found.items()}


def allowed(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in ALLOWED)


def test_the_scan_sees_every_service_and_the_cli_use_shared() -> None:
    # Guards against a scan that finds nothing and so passes vacuously.
    assert {"shared.kafka", "shared.events", "shared.promotion"} <= shared_modules()
    assert "eval_container" in users()["shared.promotion"]
    seen = set().union(*users().values())
    assert seen == {*SERVICES, CLI}, f"no shared module is used by {sorted({*SERVICES, CLI} - seen)}"


def test_every_shared_module_is_used_by_two_services_or_a_service_and_the_cli() -> None:
    misplaced = []
    for module, names in sorted(users().items()):
        services = names - {CLI}
        if not names or allowed(module) or len(services) >= 2 or (services and CLI in names):
            continue
        if services:
            (only,) = services
            misplaced.append(f"{module}: used only by {only}; move it into that package")
        else:
            misplaced.append(f"{module}: used only by the CLI; move it into {CLI}")
    assert not misplaced, "shared/ keeps what two or more services (or a service and the CLI) use:\n" + (
        "\n".join(misplaced)
    )


def test_no_shared_module_or_package_is_dead() -> None:
    dead = sorted(module for module, names in users().items() if not names and module not in RUN_BY_PATH)
    packages = {m.rsplit(".", 1)[0] for m in shared_modules() if m.count(".") > 1}
    dead_packages = sorted(
        p for p in packages if not any(users()[m] for m in shared_modules() if m.startswith(f"{p}."))
    )
    assert not dead and not dead_packages, (
        f"no service or CLI uses these (tests and bench do not count): {dead + dead_packages}"
    )


def test_no_service_imports_another_service() -> None:
    crossings = sorted(
        f"{source.path} imports {name}"
        for source, names in imports().items()
        if source.top in SERVICES
        for name in names
        if name.split(".")[0] in SERVICE_PACKAGES - {source.top}
    )
    assert not crossings, "a service may import shared/, never another service:\n" + "\n".join(crossings)


def test_nothing_outside_tests_imports_from_tests() -> None:
    offenders = sorted(
        f"{source.path} imports {name}"
        for source, names in imports().items()
        if source.top != "tests"
        for name in names
        if name.split(".")[0] == "tests"
    )
    assert not offenders, "tests/ is no library:\n" + "\n".join(offenders)
