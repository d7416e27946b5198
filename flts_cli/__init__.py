"""The `flts` command: the embedded stack (`flts up`/`flts down`) and the main job (`flts run`)."""

from pathlib import Path

# Services run from a source checkout (PYTHONPATH), and the runner reads data/ and locust/ from it.
REPO_ROOT = Path(__file__).resolve().parent.parent
