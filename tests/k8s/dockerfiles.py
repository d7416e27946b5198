"""A small Dockerfile reader: instructions with continuations joined, grouped by build stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.repo_files import files_git_would_commit
from tests.k8s.manifests import REPO_ROOT

# Image name (in the manifests) → Dockerfile, for every image this repository builds.
DOCKERFILES = {
    "preprocess": REPO_ROOT / "preprocess_container" / "Dockerfile",
    "train": REPO_ROOT / "train_container" / "Dockerfile",
    "nonml": REPO_ROOT / "nonml_container" / "Dockerfile",
    "eval": REPO_ROOT / "eval_container" / "Dockerfile",
    "inference": REPO_ROOT / "inference_container" / "Dockerfile",
    "locust": REPO_ROOT / "locust" / "Dockerfile",
    "mlflow": REPO_ROOT / ".kubernetes" / "images" / "mlflow" / "Dockerfile",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD (shell form is refused)."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :]
        return list(json.loads(text.strip()))

    def __str__(self) -> str:
        return f"{self.keyword} {self.arguments}"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfiles() -> list[Path]:
    """Every Dockerfile git would commit."""
    listed = files_git_would_commit()
    found = sorted(REPO_ROOT / line for line in listed if line.rsplit("/", 1)[-1] == "Dockerfile")
    assert sorted(DOCKERFILES.values()) == found, "a Dockerfile is missing from DOCKERFILES or not on disk"
    return found


def parse_dockerfile(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return instructions


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append(Stage(parts[0], name))
        else:
            assert result, f"{path}: {instruction} before FROM"
            result[-1].instructions.append(instruction)
    return result
