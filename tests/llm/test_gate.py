"""The gate's state machine, driven by the same events the service reports (pure: no engine, no HTTP).

After every event the report, the ``voicechat_llm_ready`` gauge and ``readiness()`` must agree; the helper
``_check`` asserts that each time.
"""

from __future__ import annotations

import pytest

from voicechat_llm import metrics as names
from voicechat_llm.gate import GateState, HealthChange, Phase
from voicechat_llm.metrics import GateMetrics
from voicechat_llm.report import WarmupReport, WarmupSample

LABELS = {"engine": "llamacpp", "model": "m"}
SAMPLES = [
    WarmupSample(ttft_seconds=0.5, total_seconds=1.0, completion_tokens=8, tokens_per_second=20.0),
    WarmupSample(ttft_seconds=0.1, total_seconds=0.4, completion_tokens=8, tokens_per_second=30.0),
]


def _new(max_warm_ttft_s: float | None = None) -> GateState:
    report = WarmupReport(
        engine="llamacpp",
        model="m",
        served_model_name="m",
        engine_url="http://127.0.0.1:8000",
        system_prompt_sha256="x",
        max_warm_ttft_s=max_warm_ttft_s,
    )
    return GateState(report=report, metrics=GateMetrics("llamacpp", "m"), max_warm_ttft_s=max_warm_ttft_s)


def _sample(state: GateState, name: str, labels: dict[str, str] | None = None) -> float | None:
    return state.metrics.registry.get_sample_value(name, labels)


def _check(state: GateState, ready: bool, reason_part: str) -> None:
    """readiness(), the report and the ready gauge say the same thing."""
    got_ready, reason = state.readiness()
    assert got_ready is ready, reason
    assert reason_part in reason
    if ready:
        assert reason == ""
    assert state.report.ready is ready
    assert state.report.reason == reason
    assert _sample(state, names.READY) == (1.0 if ready else 0.0)


def _phase(state: GateState) -> Phase:
    # A call, not the attribute: mypy would keep an earlier `assert state.phase is ...` narrowing.
    return state.phase


def _serving(max_warm_ttft_s: float | None = None, warm_ttft: float = 0.1) -> GateState:
    state = _new(max_warm_ttft_s)
    state.engine_started(1234)
    state.engine_healthy(2.5)
    state.warmed(SAMPLES, warm_ttft, 30.0, 3.0)
    return state


def test_new_state_is_starting_and_unready() -> None:
    state = _new()
    assert _phase(state) is Phase.STARTING
    _check(state, False, "engine starting")
    assert _sample(state, names.ENGINE_UP) == 0.0


def test_start_to_serving_fills_report_and_metrics() -> None:
    state = _new()
    state.engine_started(1234)
    assert state.report.engine_pid == 1234
    _check(state, False, "engine starting")

    state.engine_healthy(2.5)
    assert _phase(state) is Phase.WARMING
    _check(state, False, "warming up")
    assert state.report.load_seconds == 2.5
    assert _sample(state, names.LOAD_SECONDS, LABELS) == 2.5
    assert _sample(state, names.ENGINE_UP) == 1.0
    assert state.report.warm_ttft_seconds is None

    state.warmed(SAMPLES, 0.1, 30.0, 3.0)
    assert _phase(state) is Phase.SERVING
    _check(state, True, "")
    report = state.report
    assert (report.requests, report.samples) == (2, SAMPLES)
    assert report.warm_ttft_seconds == 0.1
    assert report.warm_tokens_per_second == 30.0
    assert report.warmup_seconds == 3.0
    assert _sample(state, names.WARM_TTFT_SECONDS, LABELS) == 0.1
    assert _sample(state, names.WARM_TOKENS_PER_SECOND, LABELS) == 30.0
    assert _sample(state, names.WARMUP_SECONDS, LABELS) == 3.0


def test_warmed_without_a_decode_rate_leaves_its_gauge_alone() -> None:
    state = _new()
    state.engine_healthy(1.0)
    state.warmed(SAMPLES[:1], 0.5, None, 1.5)
    _check(state, True, "")
    assert state.report.warm_tokens_per_second is None
    assert _sample(state, names.WARM_TOKENS_PER_SECOND, LABELS) == 0.0


@pytest.mark.parametrize("phase_events", [0, 1, 2])
def test_start_failure_at_any_phase(phase_events: int) -> None:
    state = _new()
    if phase_events >= 1:
        state.engine_started(99)
    if phase_events >= 2:
        state.engine_healthy(1.0)
    state.start_failed("warm-up request failed: ReadTimeout")
    assert _phase(state) is Phase.FAILED
    _check(state, False, "start failed: warm-up request failed: ReadTimeout")


def test_warm_ttft_over_its_bound_keeps_the_service_unready() -> None:
    state = _serving(max_warm_ttft_s=0.1, warm_ttft=0.25)
    assert _phase(state) is Phase.SERVING
    _check(state, False, "warm TTFT 0.250s exceeds max_warm_ttft_s=0.1s")
    # Within the bound: ready.
    _check(_serving(max_warm_ttft_s=0.1, warm_ttft=0.05), True, "")


def test_failed_probe_unreadies_and_a_good_one_restores() -> None:
    state = _serving()
    assert state.health_checked(None) is HealthChange.UNCHANGED
    _check(state, True, "")
    assert _sample(state, f"{names.HEALTH_CHECK_FAILURES}_total") == 0.0

    assert state.health_checked("timeout after 2s") is HealthChange.FAILING
    _check(state, False, "engine not answering: timeout after 2s")
    assert _sample(state, names.ENGINE_UP) == 0.0
    # Still failing: counted, but not a new transition (the service logs transitions only).
    assert state.health_checked("HTTP 500") is HealthChange.UNCHANGED
    _check(state, False, "engine not answering: HTTP 500")
    assert _sample(state, f"{names.HEALTH_CHECK_FAILURES}_total") == 2.0

    assert state.health_checked(None) is HealthChange.RECOVERED
    _check(state, True, "")
    assert state.engine_error is None
    assert _sample(state, names.ENGINE_UP) == 1.0


def test_engine_exit_is_final_whatever_later_probes_say() -> None:
    state = _serving()
    state.engine_exited("vllm engine exited with code -9")
    assert state.engine_dead
    _check(state, False, "vllm engine exited with code -9")
    assert _sample(state, names.ENGINE_UP) == 0.0

    # A probe racing the death (or answered by something else on the port) cannot revive it.
    assert state.health_checked(None) is HealthChange.UNCHANGED
    _check(state, False, "exited with code -9")
    assert state.engine_error == "vllm engine exited with code -9"
    assert state.health_checked("connection refused") is HealthChange.UNCHANGED
    _check(state, False, "exited with code -9")


def test_exit_during_start_up_explains_itself() -> None:
    state = _new()
    state.engine_started(7)
    state.engine_exited("vllm engine exited with code 1")
    _check(state, False, "exited with code 1")


@pytest.mark.parametrize("when", ["starting", "warming", "serving", "dead"])
def test_drain_wins_over_everything(when: str) -> None:
    state = _new()
    if when != "starting":
        state.engine_healthy(1.0)
    if when in ("serving", "dead"):
        state.warmed(SAMPLES, 0.1, 30.0, 2.0)
    if when == "dead":
        state.engine_exited("exited with code 0")
    state.drain()
    assert state.draining
    _check(state, False, "draining")
    # Nothing after a drain makes the service ready again.
    state.health_checked(None)
    _check(state, False, "draining")


def test_readiness_reason_precedence() -> None:
    """draining > engine dead > start failed > phase > TTFT bound > failing probe."""
    state = _serving(max_warm_ttft_s=0.01, warm_ttft=0.5)
    state.health_checked("timeout")
    _check(state, False, "exceeds max_warm_ttft_s")
    state.start_failed("boom")
    _check(state, False, "start failed: boom")
    state.engine_exited("exited with code 3")
    _check(state, False, "exited with code 3")
    state.drain()
    _check(state, False, "draining")
