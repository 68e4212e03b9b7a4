"""The vLLM child-process path end to end, with tests/support/fake_vllm.py as the ``vllm`` CLI.

The stand-in parses the real ``vllm serve`` flags strictly and serves the OpenAI API with llama.cpp, so
spawning, the health wait, warm-up, readiness, the child's death and the clean stop are all real.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_vllm import write_launcher
from tests.support.llm_service import (
    START_TIMEOUT_S,
    LLMServiceProcess,
    chat_body,
    engine_client,
    model_path,
    open_stream,
    pid_running,
    run_cli,
    running_service,
    status,
    wait_for,
)
from voicechat_common.localstack import free_port
from voicechat_llm import metrics
from voicechat_llm.engines.vllm import build_vllm_argv
from voicechat_llm.main import EXIT_START_FAILED
from voicechat_llm.report import WarmupReport
from voicechat_llm.settings import LLMSettings

pytestmark = pytest.mark.models

SERVED_NAME = "smol"
EXTRA_ARGS = '["--max-num-seqs","2"]'
# A dead child must show within a couple of health intervals, generously for a loaded CI machine.
NOTICE_S = 10.0


@pytest.fixture(scope="module")
def fake_vllm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_launcher(tmp_path_factory.mktemp("bin") / "vllm")


def _vllm_args(fake_vllm: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("--engine", "vllm", "--vllm-executable", str(fake_vllm), "--model", model_path()),
        *("--served-model-name", SERVED_NAME, "--max-model-len", "2048", "--extra-args", EXTRA_ARGS),
        *(
            "--warmup-requests",
            "2",
            "--warmup-max-tokens",
            "8",
            "--health-interval-s",
            "1",
            "--health-timeout-s",
            "1",
        ),
        *extra,
    )


@pytest.fixture(scope="module")
def vllm_service(fake_vllm: Path, artifacts_dir: Path) -> Iterator[LLMServiceProcess]:
    with running_service(
        artifacts_dir / "logs" / "llm" / "vllm-child.log", *_vllm_args(fake_vllm)
    ) as service:
        yield service


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_spawns_vllm_serve_and_becomes_ready(vllm_service: LLMServiceProcess, fake_vllm: Path) -> None:
    report = WarmupReport.model_validate(vllm_service.warmup_report())
    assert report.ready
    assert report.engine == "vllm"
    assert report.served_model_name == SERVED_NAME
    assert report.requests == 2
    assert report.warm_ttft_seconds is not None
    assert report.warmup_seconds is not None
    assert 0 < report.warm_ttft_seconds < report.warmup_seconds
    # The child runs exactly the command line built from the settings (the launcher execs python).
    assert report.engine_pid is not None
    assert report.engine_pid != vllm_service.pid
    settings = LLMSettings.model_validate(
        {
            "engine": "vllm",
            "vllm_executable": str(fake_vllm),
            "host": "127.0.0.1",
            "engine_port": vllm_service.engine_port,
            "max_model_len": 2048,
            "extra_args": ["--max-num-seqs", "2"],
        }
    )
    expected = build_vllm_argv(settings, model_path(), SERVED_NAME)
    assert _cmdline(report.engine_pid)[-(len(expected) - 1) :] == expected[1:]


async def test_clients_stream_from_the_child(vllm_service: LLMServiceProcess) -> None:
    body = chat_body("What is the capital of France?", 16, model=SERVED_NAME)
    async with engine_client(60) as client:
        models = (await client.get(f"{vllm_service.engine_url}/v1/models")).json()
        assert SERVED_NAME in {m["id"] for m in models["data"]}
        async with open_stream(client, vllm_service.engine_url, body) as deltas:
            text = "".join([delta async for delta in deltas])
    assert text.strip()


def test_engine_not_answering_turns_unready_then_ready_again(vllm_service: LLMServiceProcess) -> None:
    child = vllm_service.warmup_report()["engine_pid"]
    readyz = f"{vllm_service.gate_url}/readyz"
    os.kill(child, signal.SIGSTOP)  # alive but not answering: only the periodic probe can tell
    try:
        wait_for(lambda: status(readyz) == 503, NOTICE_S, "readyz to fail while the engine hangs")
        assert "engine not answering" in httpx.get(readyz, timeout=5).json()["reason"]
        assert status(f"{vllm_service.gate_url}/livez", timeout_s=10) == 503
    finally:
        os.kill(child, signal.SIGCONT)
    wait_for(lambda: status(readyz) == 200, NOTICE_S, "readyz to recover")
    gate_metrics = httpx.get(f"{vllm_service.gate_url}/metrics", timeout=5).text
    failures = next(
        s.value
        for f in text_string_to_metric_families(gate_metrics)
        for s in f.samples
        if s.name == f"{metrics.HEALTH_CHECK_FAILURES}_total"
    )
    assert failures >= 1


def test_child_killed_fails_livez_and_readyz(vllm_service: LLMServiceProcess) -> None:
    child = vllm_service.warmup_report()["engine_pid"]
    assert status(f"{vllm_service.gate_url}/livez") == 200
    os.kill(child, signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: status(f"{vllm_service.gate_url}/livez") == 503, NOTICE_S, "livez to fail")
    wait_for(lambda: status(f"{vllm_service.gate_url}/readyz") == 503, NOTICE_S, "readyz to fail")
    noticed = time.monotonic() - started
    readyz = httpx.get(f"{vllm_service.gate_url}/readyz", timeout=5).json()
    assert "exited with code -9" in readyz["reason"]
    assert vllm_service.proc.running(), "the gate stays up to report the death (Kubernetes restarts the pod)"
    assert noticed < NOTICE_S


def test_sigterm_stops_child_and_exits_0(fake_vllm: Path, artifacts_dir: Path) -> None:
    log = artifacts_dir / "logs" / "llm" / "vllm-sigterm.log"
    with running_service(log, *_vllm_args(fake_vllm, "--warmup-requests", "1")) as service:
        child = service.warmup_report()["engine_pid"]
        assert pid_running(child)
        service.terminate()
        assert service.wait_exit(60) == 0
        assert not pid_running(child)
        assert status(f"{service.engine_url}/health") is None
    assert "fake vllm: SIGTERM, shutting down" in log.read_text()


def test_the_child_gets_the_api_key_and_a_token_cap(fake_vllm: Path, artifacts_dir: Path) -> None:
    """The key reaches vLLM through VLLM_API_KEY (not its argv); the service's own warm-up and probes use it."""
    log = artifacts_dir / "logs" / "llm" / "vllm-key.log"
    args = _vllm_args(fake_vllm, "--warmup-requests", "1", "--max-tokens", "5")
    with running_service(log, *args, env={"VOICECHAT_LLM_API_KEY": "child-key"}) as service:
        child = service.warmup_report()["engine_pid"]
        assert not any("child-key" in arg for arg in _cmdline(child))
        url = f"{service.engine_url}/v1/chat/completions"
        body = {**chat_body("Count to one hundred.", 1, ignore_eos=True, model=SERVED_NAME), "stream": False}
        del body["max_tokens"]
        assert httpx.post(url, json=body, timeout=30).status_code == 401
        answered = httpx.post(url, json=body, timeout=60, headers={"Authorization": "Bearer child-key"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["usage"]["completion_tokens"] == 5
        assert httpx.get(f"{service.gate_url}/readyz", timeout=5).status_code == 200


def test_child_rejecting_its_command_line_fails_the_start(fake_vllm: Path) -> None:
    result = run_cli(
        *("--host", "127.0.0.1", "--engine-port", str(free_port()), "--gate-port", str(free_port())),
        *_vllm_args(fake_vllm, "--extra-args", '["--no-such-vllm-flag"]'),
        timeout_s=START_TIMEOUT_S,
    )
    assert result.returncode == EXIT_START_FAILED
    assert "unrecognized arguments: --no-such-vllm-flag" in result.stderr  # the child's own argparse
    last = result.stderr.strip().splitlines()[-1]
    assert last == "voicechat-llm: error: vllm engine exited with code 2 before answering its health check"


def test_startup_deadline_fails_the_start(tmp_path: Path) -> None:
    # A "vllm" that accepts the command line but never serves.
    silent = tmp_path / "vllm"
    silent.write_text("#!/bin/sh\nexec sleep 600\n")
    silent.chmod(0o755)
    result = run_cli(
        *("--host", "127.0.0.1", "--engine-port", str(free_port()), "--gate-port", str(free_port())),
        *("--engine", "vllm", "--vllm-executable", str(silent), "--startup-timeout-s", "2"),
        timeout_s=60,
    )
    assert result.returncode == EXIT_START_FAILED
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "voicechat-llm: error: vllm engine did not become healthy within startup_timeout_s=2s"
    )


def test_child_ignoring_sigterm_is_killed_after_the_deadline(tmp_path: Path, artifacts_dir: Path) -> None:
    # A "vllm" that never serves and ignores SIGTERM, as a wedged engine would.
    stubborn = tmp_path / "vllm"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 1; done\n")
    stubborn.chmod(0o755)
    log = artifacts_dir / "logs" / "llm" / "vllm-stubborn.log"
    args = ("--engine", "vllm", "--vllm-executable", str(stubborn), "--engine-stop-timeout-s", "1")
    with running_service(log, *args, ready=False) as service:
        report_url = f"{service.gate_url}/warmup"
        wait_for(lambda: status(report_url) == 503, START_TIMEOUT_S, "the gate")
        wait_for(lambda: service.warmup_report()["engine_pid"] is not None, 30, "the child to be spawned")
        child = service.warmup_report()["engine_pid"]
        assert pid_running(child)
        service.terminate()
        assert service.wait_exit(30) == 0
        assert not pid_running(child)
    assert "vllm child ignored SIGTERM; killing it" in log.read_text()
