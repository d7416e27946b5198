"""A small Dockerfile reader: instructions with continuations joined, grouped by build stage."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.repo_files import files_git_would_commit
from tests.k8s.manifests import REPO_ROOT

SERVICE_DOCKERFILE = REPO_ROOT / "Dockerfile"
MLFLOW_DOCKERFILE = REPO_ROOT / ".kubernetes" / "images" / "mlflow" / "Dockerfile"
SERVICE_IMAGES = ("preprocess", "train", "nonml", "eval", "inference", "batch", "locust")
# Image name (in the manifests) → Dockerfile, for every image this repository builds. The six
# service images are targets (stages named like the image) of one Dockerfile.
DOCKERFILES = {
    **{image: SERVICE_DOCKERFILE for image in SERVICE_IMAGES},
    "mlflow": MLFLOW_DOCKERFILE,
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
    assert sorted(set(DOCKERFILES.values())) == found, (
        "a Dockerfile is missing from DOCKERFILES or not on disk"
    )
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


def global_args(path: Path) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults: what FROM lines may use."""
    found: dict[str, str] = {}
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            found[name] = default.strip('"')
    return found


def stages(path: Path) -> list[Stage]:
    """The build stages, with `${ARG}` in FROM lines replaced by the ARG's default."""
    defaults = global_args(path)
    result: list[Stage] = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "FROM":
            parts = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], instruction.arguments).split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append(Stage(parts[0], name))
        elif result:
            result[-1].instructions.append(instruction)
    return result


def image_stages(image: str) -> list[Stage]:
    """The stages whose layers make up `image`, from the one on an external base to its target
    (the image's name in the service Dockerfile, the last stage elsewhere)."""
    built = stages(DOCKERFILES[image])
    by_name = {stage.name: stage for stage in built if stage.name}
    stage = by_name[image] if DOCKERFILES[image] == SERVICE_DOCKERFILE else built[-1]
    chain = [stage]
    while stage.base in by_name:
        stage = by_name[stage.base]
        chain.append(stage)
    return chain[::-1]


def final_stage(image: str) -> Stage:
    """The image's own layers as one stage: its chain of stages merged, on the external base."""
    chain = image_stages(image)
    return Stage(chain[0].base, chain[-1].name, [i for stage in chain for i in stage.instructions])
