"""The files a commit would contain, for tests that scan the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def files_git_would_commit() -> list[str]:
    """Tracked files plus untracked ones git does not ignore, as paths relative to the repo root.

    Asking git is fast; walking the tree would also walk .venv."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line and (REPO_ROOT / line).is_file()]
