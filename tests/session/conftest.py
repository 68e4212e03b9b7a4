"""Fixtures for the session service tests: extra service processes with special settings, metric scrapes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from voicechat_common.localstack import LocalStack, ManagedProcess, free_port
from voicechat_session.settings import ENV_PREFIX


@dataclass
class SessionService:
    """One session-service process under test."""

    process: ManagedProcess
    base_url: str

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", timeout=10.0)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return scrape(f"{self.base_url}/metrics")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus samples by (sample name, labels)."""
    text = httpx.get(url, timeout=10.0).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@contextmanager
def session_service(
    llm_api_url: str, llm_gate_url: str | None, log_dir: Path, name: str, env: Mapping[str, str]
) -> Iterator[SessionService]:
    """Start ``python -m voicechat_session`` on a free port with extra ``VOICECHAT_SESSION_*`` settings."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        name=f"voicechat-session-{name}",
        module="voicechat_session",
        ready_url=f"{base_url}/readyz",
        env={
            f"{ENV_PREFIX}HOST": "127.0.0.1",
            f"{ENV_PREFIX}PORT": str(port),
            f"{ENV_PREFIX}LLM_URL": llm_api_url,
            **({f"{ENV_PREFIX}LLM_WARMUP_URL": f"{llm_gate_url}/warmup"} if llm_gate_url else {}),
            **{f"{ENV_PREFIX}{key.upper()}": value for key, value in env.items()},
        },
        log_path=log_dir / f"session-{name}.log",
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    process.start()
    try:
        process.wait_ready(300)
        yield SessionService(process=process, base_url=base_url)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def pod_service(stack: LocalStack) -> SessionService:
    """The stack's own session service (default settings, sharing=pod)."""
    assert stack.session is not None
    return SessionService(process=stack.session, base_url=stack.session_url)


@pytest.fixture(scope="session")
def session_logs(artifacts_dir: Path) -> Path:
    return artifacts_dir / "logs" / "session"
