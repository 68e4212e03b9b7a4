"""The benchmark's pure parts: levels, pass/fail against the threshold, the README table."""

from __future__ import annotations

from pathlib import Path

from voicechat_loadtest.bench import (
    BenchResults,
    CapacityResult,
    ConnectLevel,
    LlmResult,
    connect_level,
    machine_info,
    markdown_table,
    server_breakdown,
    ttfa_level,
    write_bench_plot,
)
from voicechat_loadtest.client import ConnectSample
from voicechat_loadtest.machine import CpuShare
from voicechat_loadtest.report import build_report
from voicechat_loadtest.stats import ratio, summarize
from voicechat_session.protocol import TurnMetricsMessage

from .test_report import _turn


def _results() -> BenchResults:
    pod = [
        connect_level(n, [ConnectSample(user=i, at_s=0.0, connect_s=0.002 * n) for i in range(n)])
        for n in (1, 4, 16)
    ]
    conn = [
        connect_level(n, [ConnectSample(user=i, at_s=0.0, connect_s=2.0 * n) for i in range(n)])
        for n in (1, 4)
    ]
    conn.append(ConnectLevel(concurrent=16, samples=0, summary=summarize([]), skipped="3.0 GiB free"))
    one = build_report(
        target="t", started_at="x", wall_s=1, config={}, users=1,
        connects=[], turns=[_turn(0, 1.0), _turn(0, 1.2)],
    )  # fmt: skip
    level = ttfa_level(one, threshold_s=2.2, cpu=CpuShare(seconds=30, busy=0.9, ours=0.6, others=0.3))
    return BenchResults(
        date="2026-01-01T00:00:00+00:00",
        bench_seconds=300.0,
        machine=machine_info(),
        method={},
        llm=LlmResult(
            engine="llamacpp",
            model="/x/SmolLM2.gguf",
            load_seconds=0.5,
            warmup_seconds=3.25,
            warm_ttft_seconds=0.15,
            warm_tokens_per_second=140.0,
        ),
        connect={"pod": pod, "connection": conn},
        connect_ratio_p50={"1": ratio(2.0, 0.002), "4": ratio(8.0, 0.008), "16": None},
        connect_ratio_p99={"1": ratio(2.0, 0.002), "4": ratio(8.0, 0.008), "16": None},
        ttfa=[level],
        capacity=CapacityResult(threshold_s=2.2, max_users=3, stopped="4 users: p95 > 2.2 s", levels=[level]),
    )


def test_ttfa_level_passes_only_within_threshold_and_without_errors() -> None:
    ok = build_report(
        target="t", started_at="x", wall_s=1, config={}, users=2, connects=[], turns=[_turn(0, 1.0)]
    )
    assert ttfa_level(ok, threshold_s=1.5).passed is True
    assert ttfa_level(ok, threshold_s=0.5).passed is False
    assert ttfa_level(ok).passed is None
    failed = build_report(
        target="t", started_at="x", wall_s=1, config={}, users=2, connects=[],
        turns=[_turn(0, 1.0), _turn(1, None, error="llm_timeout")],
    )  # fmt: skip
    level = ttfa_level(failed, threshold_s=10.0)
    assert level.passed is False
    assert level.errors == {"llm_timeout": 1}


def test_connect_level_counts_errors_apart() -> None:
    level = connect_level(
        2,
        [ConnectSample(user=0, at_s=0, connect_s=0.5), ConnectSample(user=1, at_s=0, error="ready_timeout")],
    )
    assert (level.samples, level.summary.count, level.errors) == (2, 1, {"ready_timeout": 1})


def test_markdown_table() -> None:
    table = markdown_table(_results())
    rows = table.splitlines()
    assert rows[0].startswith("| measure | sharing=pod")
    assert "| connect p50 / p99, 1 concurrent | 2 ms / 2 ms | 2.00 s / 2.00 s | 1,000x / 1,000x |" in rows
    assert "| connect p50 / p99, 16 concurrent | 32 ms / 32 ms | skipped (3.0 GiB free) | - / - |" in rows
    assert "| time to first audio p50 / p95, 1 user | 1.10 s / 1.19 s | | |" in rows
    failed = build_report(
        target="t", started_at="x", wall_s=1, config={}, users=2, connects=[],
        turns=[_turn(0, 1.0), _turn(1, None, error="turn_timeout")],
    )  # fmt: skip
    results = _results()
    results.ttfa.append(ttfa_level(failed))
    assert (
        "| time to first audio p50 / p95, 2 concurrent users | 1.00 s / 1.00 s (1 of 2 turns turn_timeout) | | |"
        in (markdown_table(results).splitlines())
    )
    assert "| LLM warm-up (engine start → ready) | 3.25 s | | |" in table
    assert "(2.20 s) | 3 | | |" in table
    assert "SmolLM2.gguf (llamacpp)" in table
    # No fixed sentence about other jobs: the note says what was measured (here nothing of the CPU use).
    assert "Load average (1 min)" in table
    assert "CPU use of other processes not measured" in table


def test_bench_plot(tmp_path: Path) -> None:
    assert write_bench_plot(_results(), tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")


class _GrownMetrics(TurnMetricsMessage):
    """A server that reports a stage this client does not know yet."""

    speculation_ms: float | None = None


def test_server_breakdown_records_every_numeric_field_the_server_sends() -> None:
    turns = [_turn(0, 1.0), _turn(0, 2.0), _turn(1, 9.0, error="closed")]
    turns[1].server = _GrownMetrics(turn_id=2, source="voice", stt_ms=600.0, speculation_ms=120.0)
    report = build_report(
        target="t", started_at="x", wall_s=1, config={}, users=1, connects=[], turns=turns
    )  # fmt: skip
    breakdown = server_breakdown(report)
    # No ids, flags or Nones; counts such as playback_stalls are numbers too.
    assert set(breakdown) == {
        "stt_ms",
        "time_to_first_audio_ms",
        "speculation_ms",
        "playback_stalls",
        "playback_stall_ms",
    }
    assert (breakdown["stt_ms"].count, breakdown["stt_ms"].p50) == (2, 500.0)  # the failed turn left out
    assert breakdown["speculation_ms"].count == 1
    assert ttfa_level(report).breakdown_ms == breakdown


def test_markdown_breakdown_table() -> None:
    results = _results()
    turn_a = TurnMetricsMessage(turn_id=1, source="voice")
    turn_b = TurnMetricsMessage(turn_id=2, source="voice", playback_stalls=2, playback_stall_ms=180.0)
    stalled = build_report(
        target="t", started_at="x", wall_s=1, config={}, users=1, connects=[],
        turns=[_turn(0, 1.0).model_copy(update={"server": turn_a}), _turn(0, 1.2).model_copy(update={"server": turn_b})],
    )  # fmt: skip
    results.ttfa.append(ttfa_level(stalled).model_copy(update={"users": 2}))
    table = markdown_table(results)
    assert (
        "| audio gaps (playback stalls) per turn, mean / max; their length p95 | 0.0 / 0; 0 ms | 1.0 / 2; "
        in table
    )
    assert "| server breakdown, p50 | 1 user |" in table
    assert "| stt_ms | 400 |" in table
    assert "| time_to_first_audio_ms | 1100 |" in table
    assert "| other processes' CPU share | 30% |" in table


def test_speculation_counts_and_waste() -> None:
    from voicechat_loadtest.bench import counts_between, speculation_counts

    text = (
        "# TYPE voicechat_session_speculations_total counter\n"
        'voicechat_session_speculations_total{outcome="committed"} 7.0\n'
        'voicechat_session_speculations_total{outcome="discarded"} 3.0\n'
        'voicechat_session_speculations_created{outcome="committed"} 1.7e+09\n'
    )
    after = speculation_counts(text)
    assert after == {"committed": 7, "discarded": 3}
    level = counts_between({"committed": 2}, after)
    assert level == {"committed": 5, "discarded": 3}
