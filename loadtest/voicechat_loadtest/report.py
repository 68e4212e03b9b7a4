"""Results of a load test: the JSON report (pure builder), the stdout table and the PNG plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from voicechat_loadtest import __version__
from voicechat_loadtest.client import ConnectSample, TurnSample
from voicechat_loadtest.stats import Summary, summarize

# Metric name → (label, how to read it from a sample). Client-side first, then the server's breakdown.
CLIENT_METRICS = {
    "connect_s": "connect (dial → ready)",
    "ttfa_s": "time to first audio",
    "turn_s": "turn (speech end → audio_end)",
}
SERVER_METRICS = {
    "server_connect_s": "server: connect",
    "server_endpointing_s": "server: endpointing",
    "server_stt_s": "server: STT",
    "server_llm_ttft_s": "server: LLM first token",
    "server_tts_first_chunk_s": "server: TTS first chunk",
    "server_ttfa_s": "server: time to first audio",
}


class LoadReport(BaseModel):
    tool: str = "voicechat-loadtest"
    version: str = __version__
    target: str
    started_at: str = Field(description="UTC, ISO 8601.")
    wall_s: float
    config: dict[str, Any]
    users: int
    turns_total: int
    turns_ok: int
    transcript_matches: int
    dropped_connections: int
    errors: dict[str, int] = Field(description="Failed connects and turns by error code.")
    summary: dict[str, Summary] = Field(description="Latency distributions in seconds, by metric.")
    connects: list[ConnectSample]
    turns: list[TurnSample]


def _ms(value: float | None) -> float | None:
    return None if value is None else value / 1000


def metric_samples(connects: Sequence[ConnectSample], turns: Sequence[TurnSample]) -> dict[str, list[float]]:
    """Every latency metric's successful samples in seconds (failed attempts are counted as errors instead)."""
    ok_turns = [t for t in turns if t.error is None]
    server = [t.server for t in ok_turns if t.server is not None]
    values: dict[str, Iterable[float | None]] = {
        "connect_s": (c.connect_s for c in connects),
        "ttfa_s": (t.ttfa_s for t in ok_turns),
        "turn_s": (t.turn_s for t in ok_turns),
        "server_connect_s": (_ms(c.server_connect_ms) for c in connects if c.error is None),
        "server_endpointing_s": (_ms(m.endpointing_ms) for m in server),
        "server_stt_s": (_ms(m.stt_ms) for m in server),
        "server_llm_ttft_s": (_ms(m.llm_ttft_ms) for m in server),
        "server_tts_first_chunk_s": (_ms(m.tts_first_chunk_ms) for m in server),
        "server_ttfa_s": (_ms(m.time_to_first_audio_ms) for m in server),
    }
    return {name: [v for v in vs if v is not None] for name, vs in values.items()}


def build_report(
    *,
    target: str,
    started_at: str,
    wall_s: float,
    config: dict[str, Any],
    users: int,
    connects: Sequence[ConnectSample],
    turns: Sequence[TurnSample],
) -> LoadReport:
    errors = Counter([c.error for c in connects if c.error] + [t.error for t in turns if t.error])
    return LoadReport(
        target=target,
        started_at=started_at,
        wall_s=round(wall_s, 3),
        config=config,
        users=users,
        turns_total=len(turns),
        turns_ok=sum(t.error is None for t in turns),
        transcript_matches=sum(t.matched for t in turns),
        dropped_connections=sum(c.dropped for c in connects),
        errors=dict(errors.most_common()),
        summary={name: summarize(vs) for name, vs in metric_samples(connects, turns).items()},
        connects=list(connects),
        turns=list(turns),
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def format_table(report: LoadReport) -> str:
    """The p50/p95/p99 table (milliseconds) with error counts, for a terminal."""
    rows = [f"{'metric':<32} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}   (ms)"]
    for name, label in {**CLIENT_METRICS, **SERVER_METRICS}.items():
        s = report.summary.get(name)
        if s is None or (s.count == 0 and name in SERVER_METRICS):
            continue
        rows.append(
            f"{label:<32} {s.count:>5} {_cell(s.p50):>8} {_cell(s.p95):>8} {_cell(s.p99):>8} {_cell(s.max):>8}"
        )
    connected = sum(c.error is None for c in report.connects)
    rows.append("")
    rows.append(
        f"connections: {connected}/{len(report.connects)} ok, {report.dropped_connections} dropped;  "
        f"turns: {report.turns_ok}/{report.turns_total} ok;  "
        f"transcript matches: {report.transcript_matches}/{report.turns_total}"
    )
    if report.errors:
        rows.append("errors: " + ", ".join(f"{code} x {n}" for code, n in report.errors.items()))
    else:
        rows.append("errors: none")
    return "\n".join(rows)


def write_plot(report: LoadReport, path: Path) -> Path:
    """Latency distributions (top) and latency over the run (bottom), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = metric_samples(report.connects, report.turns)
    fig = plt.figure(figsize=(11, 8))
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 2))
    conn_ax, dist, over_time = (
        fig.add_subplot(grid[0, 0]),
        fig.add_subplot(grid[0, 1]),
        fig.add_subplot(grid[1, :]),
    )
    # Connect latency is milliseconds (pod-shared models) where turns are seconds: its own panel and unit.
    if samples["connect_s"]:
        conn_ax.hist([v * 1000 for v in samples["connect_s"]], bins=20, color="tab:blue")
    conn_ax.set_xlabel("connect (dial -> ready), ms")
    conn_ax.set_ylabel("connections")
    conn_ax.set_title("Connect latency")
    turn_metrics = [m for m in ("ttfa_s", "turn_s") if samples[m]]
    if turn_metrics:
        dist.boxplot([samples[m] for m in turn_metrics], orientation="horizontal", showmeans=True)
        dist.set_yticks(range(1, len(turn_metrics) + 1), [CLIENT_METRICS[m] for m in turn_metrics])
    dist.set_xlabel("seconds")
    dist.set_title(f"Turns: {report.turns_ok}/{report.turns_total} ok, {report.users} users")
    dist.grid(axis="x", alpha=0.3)
    fig.suptitle(f"voicechat-loadtest {report.started_at} -> {report.target}")

    series: dict[str, list[tuple[float, float]]] = {
        "connect": [(c.at_s, c.connect_s) for c in report.connects if c.connect_s is not None],
        "time to first audio": [
            (t.at_s + t.speech_s, t.ttfa_s) for t in report.turns if t.ttfa_s is not None
        ],
        "turn": [
            (t.at_s + t.speech_s, t.turn_s) for t in report.turns if t.turn_s is not None and t.error is None
        ],
    }
    for label, points in series.items():
        over_time.scatter([p[0] for p in points], [p[1] for p in points], s=14, label=label)
    failed = [c.at_s for c in report.connects if c.error] + [t.at_s for t in report.turns if t.error]
    if failed:
        over_time.scatter(failed, [0.0] * len(failed), marker="x", color="red", label="error")
    over_time.set_xlabel("seconds since start (at end of speech for turns)")
    over_time.set_ylabel("seconds")
    over_time.set_title("Latency over time")
    over_time.grid(alpha=0.3)
    over_time.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
