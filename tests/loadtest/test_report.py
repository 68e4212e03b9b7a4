"""The load test report: JSON builder, terminal table, plot, run configuration."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from voicechat_loadtest.client import BadTargetError, ConnectSample, TurnSample
from voicechat_loadtest.report import LoadReport, build_report, format_table, write_plot
from voicechat_loadtest.runner import LoadConfig
from voicechat_session.protocol import TurnMetricsMessage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _turn(user: int, ttfa: float | None, error: str | None = None, matched: bool = True) -> TurnSample:
    return TurnSample(
        user=user,
        turn=1,
        at_s=float(user),
        utterance="q",
        speech_s=1.5,
        ttfa_s=ttfa,
        turn_s=None if ttfa is None else ttfa + 1.0,
        expected="What is the capital of France?",
        transcript="What is the capital of France?" if matched else "what",
        match_score=1.0 if matched else 0.2,
        matched=matched,
        server=TurnMetricsMessage(
            turn_id=1, source="voice", stt_ms=400.0, time_to_first_audio_ms=(ttfa or 0) * 1000
        ),
        error=error,
    )


def _report() -> LoadReport:
    connects = [
        ConnectSample(user=0, at_s=0.0, connect_s=0.010, server_connect_ms=0.2),
        ConnectSample(user=1, at_s=0.5, connect_s=0.030, server_connect_ms=0.3, dropped=True),
        ConnectSample(user=2, at_s=1.0, error="server_full", error_message="full"),
    ]
    turns = [_turn(0, 1.0), _turn(1, 2.0, matched=False), _turn(1, 3.0, error="closed")]
    return build_report(
        target="ws://h:1/ws", started_at="2026-01-01T00:00:00+00:00", wall_s=12.3456, config={"users": 3},
        users=3, connects=connects, turns=turns,
    )  # fmt: skip


def test_build_report_counts_and_summarizes() -> None:
    report = _report()
    assert report.errors == {"server_full": 1, "closed": 1}
    # A turn that failed after its transcript still counts what was heard.
    assert (report.turns_total, report.turns_ok, report.transcript_matches) == (3, 2, 2)
    assert report.dropped_connections == 1
    assert report.wall_s == 12.346
    # Failed attempts are counted as errors, never as latency samples.
    assert report.summary["connect_s"].count == 2
    assert report.summary["connect_s"].p50 == pytest.approx(0.020)
    assert report.summary["ttfa_s"].count == 2
    assert report.summary["ttfa_s"].max == pytest.approx(2.0)
    assert report.summary["turn_s"].p50 == pytest.approx(2.5)
    assert report.summary["server_stt_s"].p50 == pytest.approx(0.4)
    assert report.summary["server_llm_ttft_s"].count == 0
    # The JSON file round-trips.
    assert LoadReport.model_validate_json(report.model_dump_json()) == report


def test_format_table() -> None:
    table = format_table(_report())
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["metric", "n", "p50", "p95", "p99", "max"]
    connect = next(line for line in lines if line.startswith("connect"))
    assert connect.split()[-5:] == ["2", "20", "29", "30", "30"]
    ttfa = next(line for line in lines if line.startswith("time to first audio"))
    assert ttfa.split()[-5:] == ["2", "1500", "1950", "1990", "2000"]
    assert not any(line.startswith("server: LLM") for line in lines)  # no samples, no row
    assert "connections: 2/3 ok, 1 dropped;  turns: 2/3 ok;  transcript matches: 2/3" in table
    assert "errors: server_full x 1, closed x 1" in table


def test_write_plot(tmp_path: Path) -> None:
    path = write_plot(_report(), tmp_path / "out" / "results.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


def test_write_plot_without_samples(tmp_path: Path) -> None:
    report = build_report(
        target="ws://h:1/ws", started_at="x", wall_s=1.0, config={}, users=1,
        connects=[ConnectSample(user=0, at_s=0.0, error="closed")], turns=[],
    )  # fmt: skip
    assert write_plot(report, tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def test_load_config_validation() -> None:
    assert LoadConfig(url="http://h:1").concurrency is None
    with pytest.raises(BadTargetError):
        LoadConfig(url="nonsense")
    with pytest.raises(pydantic.ValidationError, match="think time"):
        LoadConfig(url="ws://h:1/ws", think_time_s=(3.0, 1.0))
    with pytest.raises(pydantic.ValidationError):
        LoadConfig(url="ws://h:1/ws", users=0)
