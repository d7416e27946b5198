"""Rendered manifests, once per session (no cluster, no network)."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import LOCAL_DIR, Resource, kubectl, render_in_python, render_with_kubectl


@pytest.fixture(scope="session")
def rendered() -> list[Resource]:
    """The kustomization as `kubectl apply -k` would send it (kubectl if present, else Python)."""
    if kubectl() is not None:
        return render_with_kubectl()
    return render_in_python()


@pytest.fixture(scope="session")
def rendered_local() -> list[Resource]:
    """The laptop overlay (.kubernetes/overlays/local) as `kubectl apply -k` would send it."""
    if kubectl() is not None:
        return render_with_kubectl(LOCAL_DIR)
    return render_in_python(LOCAL_DIR)
