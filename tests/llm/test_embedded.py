"""The service on the embedded engine (llama.cpp in-process, SmolLM2-135M): real model, real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.llm_service import (
    START_TIMEOUT_S,
    LLMServiceProcess,
    bearer,
    chat_body,
    engine_client,
    launch,
    open_stream,
    running_service,
    slots_busy,
    status,
    wait_for,
)
from voicechat_llm import metrics
from voicechat_llm.report import WarmupReport
from voicechat_llm.settings import DEFAULT_SYSTEM_PROMPT, ENV_PREFIX

pytestmark = pytest.mark.models

PARALLEL = 4
# Services started only to check one behaviour warm up briefly: the CPU is shared.
CHEAP_WARMUP = ("--warmup-requests", "1", "--warmup-max-tokens", "4")
DRAIN_TOKENS = 16
API_KEY = "test-engine-key-0123456789"


class Started:
    """The module's service plus what /readyz answered while it started."""

    def __init__(self, service: LLMServiceProcess, readyz_seen: list[tuple[int, dict[str, object]]]) -> None:
        self.service = service
        self.readyz_seen = readyz_seen


@pytest.fixture(scope="module")
def embedded(artifacts_dir: Path) -> Iterator[Started]:
    """One service for the module; /readyz is sampled from the first moment the gate answers."""
    key_file = artifacts_dir / "llm-api-key"
    key_file.write_text(f"{API_KEY}\n")  # as a mounted Secret: the trailing newline is not part of the key
    service = launch(
        artifacts_dir / "logs" / "llm" / "embedded.log",
        *("--parallel", str(PARALLEL), "--health-interval-s", "1", "--warmup-max-tokens", "16"),
        env={f"{ENV_PREFIX}API_KEY_FILE": str(key_file)},
    )
    seen: list[tuple[int, dict[str, object]]] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        with httpx.Client(timeout=5) as client:
            while not seen or seen[-1][0] != 200:
                assert service.proc.running(), service.proc.log_tail()
                assert time.monotonic() < deadline, service.proc.log_tail()
                try:
                    response = client.get(f"{service.gate_url}/readyz")
                    seen.append((response.status_code, response.json()))
                except httpx.HTTPError:
                    time.sleep(0.02)
        yield Started(service, seen)
    finally:
        service.proc.stop()


def test_readyz_503_with_reason_until_warm_then_200(embedded: Started) -> None:
    first_status, first_body = embedded.readyz_seen[0]
    assert first_status == 503
    assert first_body["ready"] is False
    assert first_body["reason"]
    reasons = {str(body.get("reason")) for status, body in embedded.readyz_seen if status == 503}
    assert any("warming up" in reason for reason in reasons), reasons
    assert embedded.readyz_seen[-1] == (200, {"ready": True})
    livez = httpx.get(f"{embedded.service.gate_url}/livez", timeout=5)
    assert livez.status_code == 200


def test_warmup_report_is_plausible(embedded: Started) -> None:
    response = httpx.get(f"{embedded.service.gate_url}/warmup", timeout=5)
    assert response.status_code == 200
    report = WarmupReport.model_validate(response.json())
    assert report.engine == "llamacpp"
    assert report.ready
    assert report.model.endswith(".gguf")
    assert report.requests == len(report.samples) == 3
    assert report.load_seconds is not None
    assert report.load_seconds > 0
    assert report.warmup_seconds is not None
    assert report.warm_ttft_seconds is not None
    assert 0 < report.warm_ttft_seconds < report.warmup_seconds
    assert report.load_seconds < report.warmup_seconds
    assert report.warm_tokens_per_second is not None
    assert report.warm_tokens_per_second > 0
    for sample in report.samples:
        assert 0 < sample.ttft_seconds <= sample.total_seconds
        assert sample.completion_tokens > 0
    assert len(report.system_prompt_sha256) == 64


def test_gate_and_engine_metrics(embedded: Started) -> None:
    gate = httpx.get(f"{embedded.service.gate_url}/metrics", timeout=5).text
    values = {s.name: s.value for f in text_string_to_metric_families(gate) for s in f.samples}
    assert values[metrics.READY] == 1
    assert values[metrics.WARMUP_SECONDS] > 0
    assert values[metrics.WARM_TTFT_SECONDS] > 0
    assert values[metrics.WARM_TOKENS_PER_SECOND] > 0
    assert values[metrics.ENGINE_UP] == 1
    assert values[f"{metrics.HEALTH_CHECK_FAILURES}_total"] == 0
    engine = httpx.get(f"{embedded.service.engine_url}/metrics", timeout=5, headers=bearer(API_KEY))
    assert engine.status_code == 200
    assert "llamacpp:requests_processing" in engine.text


async def test_streamed_completion_with_system_prompt(embedded: Started) -> None:
    async with (
        engine_client(60, API_KEY) as client,
        open_stream(
            client, embedded.service.engine_url, chat_body("What is the capital of France?", 24)
        ) as deltas,
    ):
        text = "".join([delta async for delta in deltas])
    assert text.strip()
    assert "Paris" in text


async def test_each_slot_gets_the_whole_context_length(embedded: Started) -> None:
    """max_model_len is one conversation's context (as in vLLM), not a total llama.cpp splits across slots:
    a ~1,500-token conversation must be served while the default 4096 is shared by 4 slots."""
    long_turn = " ".join(f"Fact {i}: the meeting room number {i} is on floor {i % 7}." for i in range(90))
    async with (
        engine_client(120, API_KEY) as client,
        open_stream(client, embedded.service.engine_url, chat_body(f"{long_turn} Say OK.", 4)) as deltas,
    ):
        text = "".join([delta async for delta in deltas])
    assert text.strip()


async def test_four_concurrent_streams_complete(embedded: Started) -> None:
    questions = ["Name a color.", "Name a fruit.", "Name an animal.", "Name a city."]

    async def one(client: httpx.AsyncClient, question: str) -> str:
        async with open_stream(client, embedded.service.engine_url, chat_body(question, 16)) as deltas:
            return "".join([delta async for delta in deltas])

    async with engine_client(120, API_KEY) as client:
        replies = await asyncio.gather(*(one(client, q) for q in questions))
    assert len(replies) == PARALLEL
    assert all(reply.strip() for reply in replies), replies


async def test_cancelled_streams_free_their_slots(embedded: Started) -> None:
    engine_url = embedded.service.engine_url
    # Long generations that would hold every slot for minutes if not cancelled.
    long_body = chat_body("Tell me a very long story about the sea.", 900, ignore_eos=True)
    async with engine_client(120, API_KEY) as client:
        async with AsyncExitStack() as streams:
            # Hold every delta iterator: a dropped one is finalised, which closes its stream early.
            held = []
            for _ in range(PARALLEL):
                held.append(await streams.enter_async_context(open_stream(client, engine_url, long_body)))
                assert await anext(held[-1])
            assert await asyncio.to_thread(slots_busy, engine_url, API_KEY) == PARALLEL
        # Every client went away mid-stream: llama.cpp must release the slots.
        deadline = time.monotonic() + 20
        while (busy := await asyncio.to_thread(slots_busy, engine_url, API_KEY)) > 0:
            assert time.monotonic() < deadline, f"{busy} slots still busy after the clients disconnected"
            await asyncio.sleep(0.1)
        started = time.monotonic()
        async with open_stream(client, engine_url, chat_body("Say hello.", 8)) as deltas:
            first = await anext(deltas)
            ttft = time.monotonic() - started
            rest = "".join([delta async for delta in deltas])
    assert (first + rest).strip()
    # Served at once, not after a 900-token generation (minutes at this machine's rate).
    assert ttft < 15, ttft


async def test_engine_refuses_requests_without_the_key_and_probes_stay_open(embedded: Started) -> None:
    url, gate = embedded.service.engine_url, embedded.service.gate_url
    body = {**chat_body("Hello!", 4), "stream": False}
    for key in (None, "wrong-key", API_KEY[:-1]):
        async with engine_client(30, key) as client:
            refused = await client.post(f"{url}/v1/chat/completions", json=body)
            assert refused.status_code == 401, (key, refused.text)
            assert "Hello" not in refused.text
            for path in ("/v1/completions", "/slots", "/props", "/metrics"):
                assert (await client.get(f"{url}{path}")).status_code == 401, (key, path)
    async with engine_client(60, API_KEY) as client:
        answered = await client.post(f"{url}/v1/chat/completions", json=body)
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"].strip()
        # Even with the key, /slots (every slot's prompt and output) is off.
        assert (await client.get(f"{url}/slots")).status_code in {404, 501}
    # The kubelet's probes carry no key: the gate answers them, and llama.cpp's own /health stays open.
    async with engine_client(30) as client:
        for path in ("/livez", "/readyz", "/warmup", "/metrics"):
            assert (await client.get(f"{gate}{path}")).status_code == 200, path
        assert (await client.get(f"{url}/health")).status_code == 200


def test_engine_bounds_generation_length(artifacts_dir: Path) -> None:
    """llama.cpp: max_tokens is the default length, and max_model_len (no context shift) bounds a request
    asking for 100,000 tokens, which would otherwise hold its slot for ever."""
    log = artifacts_dir / "logs" / "llm" / "max-tokens.log"
    args = ("--max-tokens", "8", "--max-model-len", "256", "--parallel", "1", *CHEAP_WARMUP)
    with running_service(log, *args) as service:
        url = f"{service.engine_url}/v1/chat/completions"
        unspecified = {**chat_body("Count from one to one thousand.", 1, ignore_eos=True), "stream": False}
        del unspecified["max_tokens"]
        response = httpx.post(url, json=unspecified, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 8
        greedy = {**chat_body("Count from one to one thousand.", 100000, ignore_eos=True), "stream": False}
        response = httpx.post(url, json=greedy, timeout=120)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        assert usage["completion_tokens"] > 8, usage
        assert usage["total_tokens"] <= 256, usage


def test_ttft_threshold_keeps_the_service_unready(artifacts_dir: Path) -> None:
    log = artifacts_dir / "logs" / "llm" / "ttft-threshold.log"
    with running_service(log, "--max-warm-ttft-s", "0.000001", *CHEAP_WARMUP, ready=False) as service:
        wait_for(
            lambda: status(f"{service.gate_url}/warmup") == 200, START_TIMEOUT_S, "the warm-up report", 0.2
        )
        readyz = httpx.get(f"{service.gate_url}/readyz", timeout=5)
        assert readyz.status_code == 503
        assert "exceeds max_warm_ttft_s=1e-06s" in readyz.json()["reason"]
        report = service.warmup_report()
        assert report["ready"] is False
        assert report["max_warm_ttft_s"] == pytest.approx(1e-6)
        assert httpx.get(f"{service.gate_url}/livez", timeout=5).status_code == 200


async def test_sigterm_drains_in_flight_request_then_exits_0(artifacts_dir: Path) -> None:
    log = artifacts_dir / "logs" / "llm" / "drain.log"
    with running_service(log, "--drain-timeout-s", "120", *CHEAP_WARMUP) as service:
        body = chat_body("Count from one to one hundred.", DRAIN_TOKENS, ignore_eos=True)
        async with (
            engine_client(120) as client,
            open_stream(client, service.engine_url, body) as deltas,
        ):
            received = [await anext(deltas)]
            service.terminate()
            # Not ready at once, while the stream keeps going.
            deadline = time.monotonic() + 10
            while (await client.get(f"{service.gate_url}/readyz")).status_code != 503:
                assert time.monotonic() < deadline, "readyz still 200 after SIGTERM"
                await asyncio.sleep(0.05)
            body503 = (await client.get(f"{service.gate_url}/readyz")).json()
            assert "draining" in body503["reason"]
            received += [delta async for delta in deltas]
        # The in-flight request ran to its end, then the service stopped cleanly.
        assert len(received) >= DRAIN_TOKENS - 2, received
        assert await asyncio.to_thread(service.wait_exit, 60) == 0
        assert "drained" in log.read_text()
        assert await asyncio.to_thread(status, f"{service.engine_url}/health") is None


def test_system_prompt_hash_matches_setting(embedded: Started) -> None:
    import hashlib

    report = embedded.service.warmup_report()
    assert report["system_prompt_sha256"] == hashlib.sha256(DEFAULT_SYSTEM_PROMPT.encode()).hexdigest()


def test_sigterm_during_start_up_exits_0(artifacts_dir: Path) -> None:
    log = artifacts_dir / "logs" / "llm" / "sigterm-start-up.log"
    service = launch(log)
    try:
        wait_for(lambda: status(f"{service.gate_url}/readyz") is not None, START_TIMEOUT_S, "the gate")
        # Generous: xllamacpp holds the GIL while it loads the model, which stalls the gate meanwhile.
        assert status(f"{service.gate_url}/readyz", timeout_s=60) == 503
        service.terminate()
        assert service.wait_exit(60) == 0
    finally:
        service.proc.stop()
    assert "stop requested during start-up" in log.read_text()
    assert status(f"{service.engine_url}/health") is None
