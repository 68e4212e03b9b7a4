"""``voicechat-loadtest`` as users run it: against the real local stack, and against bad targets."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import get_args

import httpx
import pytest

from voicechat_common.localstack import LocalStack, free_port
from voicechat_loadtest.cli import EXIT_BAD_TARGET, RESULTS_JSON, RESULTS_PNG
from voicechat_loadtest.client import VoiceClient
from voicechat_loadtest.report import LoadReport
from voicechat_loadtest.speech import load_speech
from voicechat_session.protocol import ErrorCode

BIN = Path(sys.executable).parent
MAX_HELD = 64  # upper bound while filling a pod to max_sessions


def loadtest(*args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    """The installed console script (checks the entry point too)."""
    return subprocess.run(
        [str(BIN / "voicechat-loadtest"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def assert_clear_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == EXIT_BAD_TARGET, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("voicechat-loadtest: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# ------------------------------------------------------------------------------ no stack needed
def test_nothing_listening() -> None:
    port = free_port()
    assert_clear_error(loadtest("run", f"ws://127.0.0.1:{port}/ws", "--no-progress"), "is anything listening")
    assert_clear_error(
        loadtest("run", f"ws://127.0.0.1:{port}/ws", "--no-progress", "--no-preflight"),
        "connect_refused",
        "is anything listening",
    )


def test_invalid_url_and_arguments() -> None:
    assert_clear_error(loadtest("run", "ftp://example.org/ws"), "invalid target URL")
    assert_clear_error(loadtest("run", "ws://127.0.0.1:1/ws", "--users", "0"), "users")


# ---------------------------------------------------------------------------- the real stack
@pytest.mark.models
def test_two_users_one_turn_against_the_stack(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = loadtest(
        "run", stack.ws_url, "--users", "2", "--turns", "1", "--turn-timeout", "150", "--no-progress",
        "--out", str(out),
    )  # fmt: skip
    report = LoadReport.model_validate_json((out / RESULTS_JSON).read_text())
    assert (out / RESULTS_PNG).read_bytes().startswith(b"\x89PNG")

    assert len(report.connects) == 2
    for conn in report.connects:
        assert conn.error is None, conn.error_message
        assert conn.connect_s is not None
        assert 0 < conn.connect_s < 5
        assert conn.sharing == "pod"
    assert len(report.turns) == 2
    said = {speech.text for speech in load_speech()}
    for turn in report.turns:
        assert turn.expected in said
        assert turn.transcript, f"nothing transcribed: {turn.error}: {turn.error_message}"
    # The shipped speech is transcribed word for word by the server's Whisper: both turns match.
    assert [t.matched for t in report.turns] == [t.match_score >= 0.8 for t in report.turns]
    assert report.transcript_matches == 2
    assert "transcript matches: 2/2" in result.stdout

    # On this shared 2-core machine the server itself may fail a turn late (e.g. llm_timeout while its TTS
    # is starved): the tool must then report the server's own error code and exit 1, never a client fault.
    ok = [t for t in report.turns if t.error is None]
    failed = [t for t in report.turns if t.error is not None]
    assert ok, f"no turn succeeded: {[(t.error, t.error_message) for t in failed]}"
    server_codes = set(get_args(ErrorCode))
    assert all(t.error in server_codes for t in failed), [(t.error, t.error_message) for t in failed]
    assert result.returncode == (1 if failed else 0), result.stdout + result.stderr
    assert report.errors == dict(Counter(t.error for t in failed if t.error))
    for turn in ok:
        assert turn.ttfa_s is not None
        assert turn.turn_s is not None
        assert 0 < turn.ttfa_s <= turn.turn_s
        assert turn.reply.strip(), "the assistant said nothing"
        assert turn.audio_s > 0.2
        assert turn.server is not None
        assert turn.server.time_to_first_audio_ms is not None
        # Client and server clocks measure the same interval from the end of speech: they agree within 2 s.
        assert abs(turn.server.time_to_first_audio_ms / 1000 - turn.ttfa_s) < 2.0
    assert report.dropped_connections == 0
    assert report.summary["ttfa_s"].count == len(ok)
    assert "time to first audio" in result.stdout


@pytest.mark.models
def test_wrong_urls_on_the_stack(stack: LocalStack) -> None:
    # The session service, wrong path: the WebSocket upgrade is refused.
    assert_clear_error(
        loadtest("run", f"{stack.session_url}/not-the-socket", "--no-progress"),
        "handshake_rejected",
        "wrong URL",
    )
    # A ready HTTP service that is not a session service (the LLM gate).
    assert_clear_error(loadtest("run", stack.llm_gate_url, "--no-progress"), "handshake_rejected")


@asynccontextmanager
async def full_pod(stack: LocalStack) -> AsyncIterator[int]:
    """Open sessions until the pod reports itself full (its /readyz turns 503); close them afterwards."""
    clients: list[VoiceClient] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            while (await http.get(f"{stack.session_url}/readyz")).status_code == 200:
                assert len(clients) < MAX_HELD, "the pod never reported itself full"
                client = VoiceClient(stack.ws_url, len(clients), time.perf_counter())
                assert (await client.connect()).error is None
                clients.append(client)
        yield len(clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=10) as http:
            while (await http.get(f"{stack.session_url}/readyz")).status_code != 200:
                assert time.monotonic() < deadline, (
                    "the pod did not become ready again after the sessions closed"
                )
                await asyncio.sleep(0.1)


@pytest.mark.models
async def test_full_pod_is_a_clear_error(stack: LocalStack) -> None:
    async with full_pod(stack) as held:
        assert held >= 1
        checked = await asyncio.to_thread(loadtest, "run", stack.ws_url, "--no-progress")
        assert_clear_error(checked, "target not ready", "503", "full")
        refused = await asyncio.to_thread(loadtest, "run", stack.ws_url, "--no-progress", "--no-preflight")
        assert_clear_error(refused, "server_full")


@pytest.mark.models
def test_locust_user_reports_connect_and_time_to_first_audio(stack: LocalStack, tmp_path: Path) -> None:
    """The Locust user class on the same client, headless, one user; Locust's CSV has our requests."""
    # Locate the locustfile without importing it: importing locust monkey-patches this process with gevent.
    spec = importlib.util.find_spec("voicechat_loadtest.locustfile")
    assert spec is not None
    assert spec.origin is not None
    prefix = tmp_path / "locust"
    result = subprocess.run(
        [
            str(BIN / "locust"), "-f", spec.origin, "--headless", "--users", "1", "--spawn-rate", "1",
            "--run-time", "3s", "--stop-timeout", "180", "--host", stack.ws_url, "--json-file", str(prefix), "--csv", str(prefix),
            "--only-summary",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # Locust exits 1 when any request failed; a failure must be the server's own error code (see above).
    assert result.returncode in (0, 1), result.stderr[-3000:]
    server_codes = set(get_args(ErrorCode))
    with open(f"{prefix}_failures.csv", newline="") as failures_file:
        failures = [row["Error"] for row in csv.DictReader(failures_file)]
    codes = [m.group(1) if (m := re.search(r"VoiceTurnError\('(\w+):", f)) else f for f in failures]
    assert set(codes) <= server_codes, failures
    # Locust's final statistics, written after the in-flight turn finished (--stop-timeout).
    stats = {entry["name"]: entry for entry in json.loads(Path(f"{prefix}.json").read_text())}
    for name in ("connect", "time_to_first_audio", "turn"):
        assert name in stats, f"no {name} requests in Locust's stats: {sorted(stats)}"
        assert stats[name]["num_requests"] >= 1
    assert stats["connect"]["num_requests"] == 1
    assert stats["connect"]["num_failures"] == 0
    assert 0 < stats["connect"]["max_response_time"] < 5000
    failed_requests = sum(entry["num_failures"] for entry in stats.values())
    assert (result.returncode == 1) == (failed_requests > 0)
    if not failed_requests:
        assert 0 < stats["time_to_first_audio"]["max_response_time"] <= stats["turn"]["max_response_time"]
