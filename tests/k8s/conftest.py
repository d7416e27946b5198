"""Rendered manifests, once per session (no cluster, no network)."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import Resource, kubectl, render_in_python, render_with_kubectl


@pytest.fixture(scope="session")
def rendered() -> list[Resource]:
    """The kustomization as `kubectl apply -k` would send it (kubectl if present, else Python)."""
    if kubectl() is not None:
        return render_with_kubectl()
    return render_in_python()
