"""The cluster tests' control plane: started once per test session, with the CRDs and manifests/ applied."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.control_plane import (
    ControlPlane,
    kubernetes_version,
    missing_binaries,
    running_control_plane,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
CRD_NAMES = ("voicechats.voicechat.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.cluster)


def established(plane: ControlPlane, name: str) -> bool:
    crd = plane.admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
    return any(
        c["type"] == "Established" and c["status"] == "True"
        for c in crd.get("status", {}).get("conditions", [])
    )


@pytest.fixture(scope="session")
def control_plane(artifacts_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + controller-manager + scheduler + the test kubelet, with manifests/ applied.

    Logs, certificates and the audit log stay in test-artifacts/cluster/ for a look after a failure.
    """
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {missing}: run `make system` (builds the control plane into .cache/)")
    workdir = artifacts_dir / "cluster"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with running_control_plane(workdir) as plane:
        timing: dict[str, Any] = {"kubernetes": kubernetes_version(), "start_s": round(plane.started_in_s, 2)}
        # The install a user does first: namespace, CRDs, ServiceAccount, RBAC, the operator Deployment.
        plane.kubectl("apply", "--server-side", "-f", str(MANIFESTS))
        for name in CRD_NAMES:
            wait_for(partial(established, plane, name), what=f"CRD {name} established")
        (workdir / "timing.json").write_text(json.dumps(timing))
        print(f"\ncontrol plane {timing['kubernetes']} ready in {timing['start_s']} s")
        yield plane
