"""Each service imports only the libraries it needs: its Docker image installs only those.

Checked in a fresh interpreter per entry point, since this test process has imported everything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# entry point -> libraries it must never import
NOT_IMPORTED = {
    "nonml_container.__main__": ("torch",),
    "preprocess_container.__main__": ("torch", "prophet", "mlflow", "matplotlib", "fastapi"),
    "eval_container.__main__": ("torch", "prophet", "cmdstanpy", "matplotlib"),
    "batch_container.__main__": ("matplotlib",),
}


@pytest.mark.parametrize("module", sorted(NOT_IMPORTED))
def test_the_entry_point_imports_none_of_the_libraries_it_does_not_need(module: str) -> None:
    banned = NOT_IMPORTED[module]
    script = (
        f"import {module}, sys\n"
        f"found = [name for name in {banned!r} if name in sys.modules]\n"
        "assert not found, f'imported {found}'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
