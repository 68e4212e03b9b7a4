"""``make bench``: the local stack measured side by side, ``sharing=pod`` against ``sharing=connection``.

One run starts the LLM service once, then a session service with ``sharing=pod`` (connect latency, time to
first audio for 1 and 4 users, how many users it holds) and then one with ``sharing=connection`` (connect
latency), and writes ``results.json``, ``results.png`` and ``results.md`` (the README's table).
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, Field, computed_field

from voicechat_common.contracts import SPECULATIONS_METRIC
from voicechat_common.localstack import LOCAL_LLM_NICE, LocalStack, ServiceStartError, free_port
from voicechat_llm.report import WarmupReport
from voicechat_loadtest import __version__
from voicechat_loadtest.client import ClientOptions, ConnectSample, VoiceClient
from voicechat_loadtest.machine import CpuShare, CpuSnapshot, describe, pids_cpu_s, self_and_children_cpu_s
from voicechat_loadtest.report import LoadReport
from voicechat_loadtest.runner import LoadConfig, run_load
from voicechat_loadtest.speech import Speech, load_speech
from voicechat_loadtest.stats import Summary, ratio, summarize
from voicechat_session.settings import ENV_PREFIX, SessionSettings

Sharing = Literal["pod", "connection"]
CONNECT_LEVELS = (1, 4, 16)
CAPACITY_LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
MAX_SESSIONS = max(*CONNECT_LEVELS, *CAPACITY_LEVELS)
# Bytes of RAM one sharing=connection session may take (Whisper tiny + Kokoro int8 + VAD, measured ~0.7 GB);
# the 16-connection round is skipped rather than run the shared machine out of memory.
CONNECTION_SESSION_BYTES = 900 * 1024**2
# Greedy decoding: the same questions get the same replies, so two runs synthesize the same amount of speech
# (at the service's default 0.3, one run's replies were twice as long as another's).
BENCH_LLM_TEMPERATURE = 0.0


def _env_name(field: str) -> str:
    assert field in SessionSettings.model_fields, field
    return ENV_PREFIX + field.upper()


# ------------------------------------------------------------------------------------------ results
class MachineInfo(BaseModel):
    cpu_model: str
    cores: int
    ram_gib: float
    platform: str
    python: str
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float] | None = None
    cpu: CpuShare | None = Field(None, description="CPU use over the whole run: ours and other processes'.")
    note: str = Field("", description="What the load figures say about the run, in words.")


class ConnectLevel(BaseModel):
    concurrent: int
    samples: int
    summary: Summary
    errors: dict[str, int] = Field(default_factory=dict)
    skipped: str | None = None


class TtfaLevel(BaseModel):
    users: int
    turns: int
    ttfa: Summary
    server_ttfa: Summary
    turn: Summary
    errors: dict[str, int]
    transcript_matches: int
    passed: bool | None = None
    breakdown_ms: dict[str, Summary] = Field(
        default_factory=dict,
        description="The server's per-turn figures (`turn_metrics`, every numeric field it sent), in ms.",
    )
    cpu: CpuShare | None = Field(None, description="CPU use while this level ran.")
    speculation: dict[str, int] = Field(
        default_factory=dict,
        description="Turns by `turn_metrics.speculation` (hit / miss / none) over the level's successful turns.",
    )
    speculations: dict[str, int] = Field(
        default_factory=dict,
        description="The server's speculation attempts during the level, by outcome "
        f"(`{SPECULATIONS_METRIC}`): committed, discarded, aborted, saturated.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def speculation_waste(self) -> float | None:
        """Share of the speculative replies started that were thrown away."""
        started = sum(n for outcome, n in self.speculations.items() if outcome != "saturated")
        wasted = self.speculations.get("discarded", 0) + self.speculations.get("aborted", 0)
        return wasted / started if started else None


class CapacityResult(BaseModel):
    threshold_s: float | None = Field(description="Twice the single-user TTFA p50.")
    max_users: int | None = Field(description="Most concurrent users with TTFA p95 within the threshold.")
    stopped: str = Field(description="Why the search stopped.")
    levels: list[TtfaLevel]


class LlmResult(BaseModel):
    engine: str
    model: str
    load_seconds: float | None
    warmup_seconds: float | None
    warm_ttft_seconds: float | None
    warm_tokens_per_second: float | None


class BenchResults(BaseModel):
    tool: str = f"voicechat-loadtest bench {__version__}"
    date: str
    bench_seconds: float
    machine: MachineInfo
    method: dict[str, str]
    llm: LlmResult
    connect: dict[str, list[ConnectLevel]] = Field(description="By sharing mode.")
    connect_ratio_p50: dict[str, float | None] = Field(description="connection / pod, by concurrency.")
    connect_ratio_p99: dict[str, float | None]
    ttfa: list[TtfaLevel] = Field(description="sharing=pod, 1 and 4 concurrent users.")
    capacity: CapacityResult


# --------------------------------------------------------------------------------- pure helpers
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> MachineInfo:
    return MachineInfo(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 1,
        ram_gib=round((_mem_bytes("MemTotal") or 0) / 1024**3, 1),
        platform=platform.platform(),
        python=platform.python_version(),
        load_average_start=os.getloadavg(),
    )


def server_breakdown(report: LoadReport) -> dict[str, Summary]:
    """Every numeric field of the server's ``turn_metrics`` over the level's successful turns.

    Read generically, so that stages the server adds to its breakdown are recorded without a change here.
    """
    values: dict[str, list[float]] = {}
    for turn in report.turns:
        if turn.error is not None or turn.server is None:
            continue
        for name, value in turn.server.model_dump().items():
            if name == "turn_id" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            values.setdefault(name, []).append(float(value))
    return {name: summarize(samples) for name, samples in values.items()}


def speculation_of_turns(report: LoadReport) -> dict[str, int]:
    counts: dict[str, int] = {}
    for turn in report.turns:
        if turn.error is None and turn.server is not None and turn.server.speculation is not None:
            counts[turn.server.speculation] = counts.get(turn.server.speculation, 0) + 1
    return counts


_SPECULATION_SAMPLE = re.compile(SPECULATIONS_METRIC + r'_total\{outcome="(\w+)"\} ([0-9.e+]+)')


def speculation_counts(metrics_text: str) -> dict[str, int]:
    """The speculation counter's samples by outcome, from a Prometheus text exposition."""
    return {m[1]: round(float(m[2])) for m in _SPECULATION_SAMPLE.finditer(metrics_text)}


def counts_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


@dataclass
class LevelRun:
    """One load level as measured: the load test's report and the CPU use meanwhile."""

    report: LoadReport
    cpu: CpuShare | None = None
    speculations: dict[str, int] | None = None


def ttfa_level(
    report: LoadReport,
    threshold_s: float | None = None,
    cpu: CpuShare | None = None,
    speculations: dict[str, int] | None = None,
) -> TtfaLevel:
    ttfa = report.summary["ttfa_s"]
    passed = None
    if threshold_s is not None:
        passed = not report.errors and ttfa.p95 is not None and ttfa.p95 <= threshold_s
    return TtfaLevel(
        users=report.users,
        turns=report.turns_total,
        ttfa=ttfa,
        server_ttfa=report.summary["server_ttfa_s"],
        turn=report.summary["turn_s"],
        errors=report.errors,
        transcript_matches=report.transcript_matches,
        passed=passed,
        breakdown_ms=server_breakdown(report),
        cpu=cpu,
        speculation=speculation_of_turns(report),
        speculations=speculations or {},
    )


def connect_level(concurrent: int, samples: Sequence[ConnectSample]) -> ConnectLevel:
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    return ConnectLevel(
        concurrent=concurrent,
        samples=len(samples),
        summary=summarize([s.connect_s for s in samples if s.connect_s is not None]),
        errors=errors,
    )


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}x" if value >= 10 else f"{value:.1f}x"


def _fmt_errors(errors: dict[str, int], turns: int) -> str:
    if not errors:
        return ""
    return " (" + ", ".join(f"{n} of {turns} turns {code}" for code, n in errors.items()) + ")"


def markdown_table(results: BenchResults) -> str:
    """The README's performance table."""
    pod = {lvl.concurrent: lvl for lvl in results.connect.get("pod", [])}
    conn = {lvl.concurrent: lvl for lvl in results.connect.get("connection", [])}
    rows = [
        "| measure | sharing=pod (ours) | sharing=connection (before) | connection / pod |",
        "|---|---|---|---|",
    ]
    for n in CONNECT_LEVELS:
        p, c = pod.get(n), conn.get(n)
        cell_p = f"{_fmt_s(p.summary.p50)} / {_fmt_s(p.summary.p99)}" if p else "-"
        cell_c = (
            f"skipped ({c.skipped})"
            if c and c.skipped
            else f"{_fmt_s(c.summary.p50)} / {_fmt_s(c.summary.p99)}"
            if c
            else "-"
        )
        ratios = f"{_fmt_ratio(results.connect_ratio_p50.get(str(n)))} / {_fmt_ratio(results.connect_ratio_p99.get(str(n)))}"
        rows.append(f"| connect p50 / p99, {n} concurrent | {cell_p} | {cell_c} | {ratios} |")
    for lvl in results.ttfa:
        who = "1 user" if lvl.users == 1 else f"{lvl.users} concurrent users"
        rows.append(
            f"| time to first audio p50 / p95, {who} | {_fmt_s(lvl.ttfa.p50)} / {_fmt_s(lvl.ttfa.p95)}"
            f"{_fmt_errors(lvl.errors, lvl.turns)} | | |"
        )
    rows.append(f"| LLM warm-up (engine start → ready) | {_fmt_s(results.llm.warmup_seconds)} | | |")
    cap = results.capacity
    rows.append(
        f"| concurrent users per pod before TTFA p95 > 2 x single-user p50 ({_fmt_s(cap.threshold_s)}) "
        f"| {cap.max_users if cap.max_users is not None else '-'} | | |"
    )
    m = results.machine
    footer = (
        f"\n{m.cpu_model}, {m.cores} cores, {m.ram_gib:g} GiB RAM, no GPU; {results.date[:10]}; "
        f"LLM {Path(results.llm.model).name} ({results.llm.engine}). TTFA is measured by the client from the "
        f"end of its speech, so it includes the server's end-of-turn silence. "
        + (m.note or describe(m.cores, m.load_average_start, m.load_average_end, m.cpu))
    )
    return "\n".join(rows) + "\n" + footer + "\n" + breakdown_table(results)


def _levels_by_users(results: BenchResults) -> list[TtfaLevel]:
    by_users = {lvl.users: lvl for lvl in results.ttfa}
    by_users.update({lvl.users: lvl for lvl in results.capacity.levels})
    return [by_users[n] for n in sorted(by_users)]


def _stalls_cell(level: TtfaLevel) -> str:
    stalls, stall_ms = level.breakdown_ms.get("playback_stalls"), level.breakdown_ms.get("playback_stall_ms")
    if stalls is None or stalls.mean is None or stall_ms is None:
        return "-"
    return f"{stalls.mean:.1f} / {stalls.max:g}; {stall_ms.p95:.0f} ms"


def breakdown_table(results: BenchResults) -> str:
    """The server's per-turn breakdown, p50 per load level (every field it reported), and other CPU use."""
    levels = _levels_by_users(results)
    fields: list[str] = []
    for lvl in levels:
        fields += [name for name in lvl.breakdown_ms if name not in fields]
    if not levels or not fields:
        return ""
    head = "| server breakdown, p50 | " + " | ".join(
        "1 user" if lvl.users == 1 else f"{lvl.users} users" for lvl in levels
    )
    rows = ["", head + " |", "|---" * (len(levels) + 1) + "|"]
    for name in fields:
        cells = []
        for lvl in levels:
            summary = lvl.breakdown_ms.get(name)
            p50 = summary.p50 if summary is not None else None
            cells.append("-" if p50 is None else f"{p50:.0f}" if name.endswith("_ms") else f"{p50:g}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append(
        "| turns: speculation hit / miss / none | "
        + " | ".join(
            " / ".join(str(lvl.speculation.get(k, 0)) for k in ("hit", "miss", "none")) for lvl in levels
        )
        + " |"
    )
    rows.append(
        "| speculative replies committed / discarded (waste) | "
        + " | ".join(
            f"{lvl.speculations.get('committed', 0)} / "
            f"{lvl.speculations.get('discarded', 0) + lvl.speculations.get('aborted', 0)}"
            + ("" if lvl.speculation_waste is None else f" ({lvl.speculation_waste:.0%})")
            + (
                f", {lvl.speculations['saturated']} not started (saturated)"
                if "saturated" in lvl.speculations
                else ""
            )
            for lvl in levels
        )
        + " |"
    )
    rows.append(
        "| audio gaps (playback stalls) per turn, mean / max; their length p95 | "
        + " | ".join(_stalls_cell(lvl) for lvl in levels)
        + " |"
    )
    rows.append(
        "| other processes' CPU share | "
        + " | ".join("-" if lvl.cpu is None else f"{lvl.cpu.others:.0%}" for lvl in levels)
        + " |"
    )
    return "\n".join(rows) + "\n"


def write_bench_plot(results: BenchResults, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (conn_ax, ttfa_ax) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.2
    for i, (mode, stat) in enumerate(
        (("pod", "p50"), ("pod", "p99"), ("connection", "p50"), ("connection", "p99"))
    ):
        levels = results.connect.get(mode, [])
        xs = [CONNECT_LEVELS.index(lvl.concurrent) + (i - 1.5) * width for lvl in levels]
        ys = [getattr(lvl.summary, stat) or 0.0 for lvl in levels]
        conn_ax.bar(xs, ys, width, label=f"{mode} {stat}")
    conn_ax.set_xticks(range(len(CONNECT_LEVELS)), [f"{n} concurrent" for n in CONNECT_LEVELS])
    conn_ax.set_yscale("log")
    conn_ax.set_ylabel("connect latency, seconds (log)")
    conn_ax.set_title("Connect (dial → ready): shared models vs per-connection models")
    conn_ax.legend()
    conn_ax.grid(axis="y", alpha=0.3)

    steps = results.capacity.levels
    users = [step.users for step in steps]
    ttfa_ax.plot(users, [step.ttfa.p50 for step in steps], "o-", label="TTFA p50")
    ttfa_ax.plot(users, [step.ttfa.p95 for step in steps], "s-", label="TTFA p95")
    if results.capacity.threshold_s is not None:
        ttfa_ax.axhline(
            results.capacity.threshold_s, color="red", linestyle="--", label="2 x single-user p50"
        )
    ttfa_ax.set_xlabel("concurrent users (sharing=pod)")
    ttfa_ax.set_ylabel("time to first audio, seconds")
    ttfa_ax.set_title(f"Users per pod: {results.capacity.max_users} ({results.machine.cores} cores)")
    ttfa_ax.legend()
    ttfa_ax.grid(alpha=0.3)
    fig.suptitle(f"VoiceChat bench — {results.machine.cpu_model}, {results.date[:10]}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ measuring
def _say(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


async def connect_round(url: str, concurrent: int) -> list[ConnectSample]:
    """``concurrent`` users dial at the same moment; all stay open until every one is ready, then close."""
    origin = time.perf_counter()
    options = ClientOptions(ready_timeout_s=300.0)
    clients = [VoiceClient(url, user, origin, options) for user in range(concurrent)]
    try:
        return list(await asyncio.gather(*(c.connect() for c in clients)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def measure_connects(url: str, rounds: dict[int, int], sharing: Sharing) -> list[ConnectLevel]:
    levels = []
    for concurrent, n_rounds in rounds.items():
        if sharing == "connection":
            available = _mem_bytes("MemAvailable") or 0
            if available < concurrent * CONNECTION_SESSION_BYTES:
                reason = f"{available / 1024**3:.1f} GiB free < {concurrent} x per-connection models"
                _say(f"connect sharing={sharing} x{concurrent}: skipped, {reason}")
                levels.append(
                    ConnectLevel(concurrent=concurrent, samples=0, summary=Summary(count=0), skipped=reason)
                )
                continue
        samples: list[ConnectSample] = []
        for _ in range(n_rounds):
            samples += await connect_round(url, concurrent)
        level = connect_level(concurrent, samples)
        _say(
            f"connect sharing={sharing} x{concurrent}: p50 {_fmt_s(level.summary.p50)}, "
            f"p99 {_fmt_s(level.summary.p99)}, errors {level.errors or 'none'}"
        )
        levels.append(level)
    return levels


def _users_config(url: str, users: int, turns: int) -> LoadConfig:
    # Users start spread over ~one turn and pause between turns, as people do, instead of speaking in lockstep.
    return LoadConfig(
        url=url,
        users=users,
        turns=turns,
        ramp_up_s=3.0 if users > 1 else 0.0,
        think_time_s=(1.0, 3.0),
        turn_timeout_s=90.0,
    )


async def measure_users(
    url: str, users: int, turns: int, speeches: list[Speech], pids: Sequence[int] = ()
) -> LevelRun:
    """``users`` talking at once; ``pids``: our service processes, whose CPU time is not "other processes"."""
    ours = [os.getpid(), *pids]
    metrics_url = url.replace("ws://", "http://").removesuffix("/ws") + "/metrics"
    spec_before = await _speculations(metrics_url)
    before = CpuSnapshot.take(pids_cpu_s(ours))
    report = await run_load(_users_config(url, users, turns), speeches, progress=False)
    after = CpuSnapshot.take(pids_cpu_s(ours))
    spec_after = await _speculations(metrics_url)
    speculations = (
        counts_between(spec_before, spec_after)
        if spec_before is not None and spec_after is not None
        else None
    )
    cpu = CpuShare.between(before, after) if before is not None and after is not None else None
    ttfa = report.summary["ttfa_s"]
    _say(
        f"{users} user(s) x {turns} turns: TTFA p50 {_fmt_s(ttfa.p50)}, p95 {_fmt_s(ttfa.p95)}, "
        f"errors {report.errors or 'none'}, transcript matches {report.transcript_matches}/{report.turns_total}"
        + (f", other processes' CPU {cpu.others:.0%}" if cpu is not None else "")
        + (f", speculations {speculations}" if speculations else "")
    )
    return LevelRun(report, cpu, speculations)


async def _speculations(metrics_url: str) -> dict[str, int] | None:
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(metrics_url)
            response.raise_for_status()
    except httpx.HTTPError:
        return None
    return speculation_counts(response.text)


async def find_capacity(
    url: str,
    speeches: list[Speech],
    known: dict[int, LevelRun],
    turns: int,
    out_of_time: Callable[[float], bool],
    pids: Sequence[int] = (),
) -> CapacityResult:
    """Step through CAPACITY_LEVELS until TTFA p95 exceeds twice the single-user p50 (or time runs out)."""
    single = known[1].report.summary["ttfa_s"].p50
    threshold = 2 * single if single is not None else None
    levels: list[TtfaLevel] = []
    max_users: int | None = None
    stopped = f"all levels up to {CAPACITY_LEVELS[-1]} users passed"
    last_level_s = 0.0
    for users in CAPACITY_LEVELS:
        if out_of_time(last_level_s * 1.5):
            stopped = f"time budget reached before {users} users"
            break
        started = time.perf_counter()
        run = known.get(users) or await measure_users(url, users, turns, speeches, pids)
        last_level_s = time.perf_counter() - started
        level = ttfa_level(run.report, threshold, run.cpu, run.speculations)
        levels.append(level)
        if not level.passed:
            stopped = (
                f"{users} users: TTFA p95 {_fmt_s(level.ttfa.p95)} > {_fmt_s(threshold)}"
                if not level.errors
                else f"{users} users: errors {level.errors}"
            )
            break
        max_users = users
    return CapacityResult(threshold_s=threshold, max_users=max_users, stopped=stopped, levels=levels)


@contextmanager
def session_service(stack: LocalStack, sharing: Sharing) -> Iterator[str]:
    stack.session_port = free_port()
    _say(f"starting the session service with sharing={sharing}")
    stack.start_session(
        {
            _env_name("sharing"): sharing,
            _env_name("max_sessions"): str(MAX_SESSIONS),
            _env_name("llm_temperature"): str(BENCH_LLM_TEMPERATURE),
        }
    )
    try:
        yield stack.ws_url
    finally:
        if stack.session is not None:
            stack.session.stop()
            stack.session = None


def _service_pids(stack: LocalStack) -> list[int]:
    return [p.proc.pid for p in stack.processes() if p.proc is not None]


def run_bench(out: Path, budget_s: float = 600.0, quick: bool = False, llm_nice: int = LOCAL_LLM_NICE) -> int:
    began = time.perf_counter()
    machine = machine_info()
    cpu_start = CpuSnapshot.take(self_and_children_cpu_s())
    speeches = load_speech()
    log_dir = Path(tempfile.mkdtemp(prefix="voicechat-bench-"))
    stack = LocalStack.on_free_ports(with_session=False, log_dir=log_dir, llm_nice=llm_nice)
    connect_rounds = {1: 2, 4: 1, 16: 1} if quick else {1: 10, 4: 4, 16: 2}
    conn_rounds = {1: 1, 4: 1, 16: 1} if quick else {1: 3, 4: 1, 16: 1}
    turns_single, turns_multi = (2, 1) if quick else (6, 3)

    def out_of_time(next_step_s: float) -> bool:
        return time.perf_counter() - began + next_step_s > budget_s

    try:
        _say(f"starting the LLM service (logs in {log_dir})")
        stack.start_llm()
        warm = WarmupReport.model_validate(httpx.get(f"{stack.llm_gate_url}/warmup", timeout=10).json())
        _say(f"LLM ready: warm-up {_fmt_s(warm.warmup_seconds)}, warm TTFT {_fmt_s(warm.warm_ttft_seconds)}")
        with session_service(stack, "pod") as url:
            pod_connects = asyncio.run(measure_connects(url, connect_rounds, "pod"))
            pids = _service_pids(stack)
            known = {
                1: asyncio.run(measure_users(url, 1, turns_single, speeches, pids)),
                4: asyncio.run(measure_users(url, 4, turns_multi, speeches, pids)),
            }
            ttfa = [
                ttfa_level(run.report, cpu=run.cpu, speculations=run.speculations)
                for run in (known[1], known[4])
            ]
            capacity = asyncio.run(
                find_capacity(url, speeches, known, turns_multi, lambda s: out_of_time(s + 60.0), pids)
            )
            _say(f"capacity: {capacity.max_users} users ({capacity.stopped})")
        with session_service(stack, "connection") as url:
            conn_connects = asyncio.run(measure_connects(url, conn_rounds, "connection"))
    except ServiceStartError as err:
        sys.stderr.write(f"voicechat-loadtest bench: {str(err).splitlines()[0]} (logs in {log_dir})\n")
        return 1
    finally:
        stack.stop()

    machine.load_average_end = os.getloadavg()
    # Every service has exited and been waited for: its CPU time is in our children's usage now.
    cpu_end = CpuSnapshot.take(self_and_children_cpu_s())
    if cpu_start is not None and cpu_end is not None:
        machine.cpu = CpuShare.between(cpu_start, cpu_end)
    machine.note = describe(machine.cores, machine.load_average_start, machine.load_average_end, machine.cpu)
    pod_by, conn_by = (
        {lvl.concurrent: lvl for lvl in pod_connects},
        {lvl.concurrent: lvl for lvl in conn_connects},
    )
    results = BenchResults(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        bench_seconds=round(time.perf_counter() - began, 1),
        machine=machine,
        method={
            "connect": "N clients dial at once (rounds: pod "
            + ", ".join(f"{n}x{r}" for n, r in connect_rounds.items())
            + "; connection "
            + ", ".join(f"{n}x{r}" for n, r in conn_rounds.items())
            + "); latency = WebSocket dial → `ready` received.",
            "ttfa": "client clock: end of its speech (real-time paced 16 kHz PCM16, then silence) → first binary "
            "audio frame; includes the server's end-of-turn silence (vad_min_silence_ms).",
            "users": "users start spread over 3 s and think 1-3 s between turns; "
            f"{turns_single} turns for 1 user, {turns_multi} turns per user otherwise.",
            "capacity": "levels " + ", ".join(map(str, CAPACITY_LEVELS)) + ": a level passes when it has no "
            "errors and TTFA p95 <= 2 x single-user p50; stop at the first failing level.",
            "speech": ", ".join(f"{s.name} ({s.duration_s:.1f} s)" for s in speeches),
            "machine": "CPU shares from /proc/stat (all cores) against the CPU time of the bench and the services "
            "it started; 'others' is everything else, including a hypervisor's steal time.",
            "llm_nice": f"the LLM engine's threads run at nice {stack.llm_nice} (voicechat-llm --nice)",
            "llm_temperature": f"{BENCH_LLM_TEMPERATURE:g} (greedy: the same replies in every run)",
        },
        llm=LlmResult(
            engine=warm.engine,
            model=warm.model,
            load_seconds=warm.load_seconds,
            warmup_seconds=warm.warmup_seconds,
            warm_ttft_seconds=warm.warm_ttft_seconds,
            warm_tokens_per_second=warm.warm_tokens_per_second,
        ),
        connect={"pod": pod_connects, "connection": conn_connects},
        connect_ratio_p50={
            str(n): ratio(conn_by[n].summary.p50, pod_by[n].summary.p50)
            for n in CONNECT_LEVELS
            if n in conn_by
        },
        connect_ratio_p99={
            str(n): ratio(conn_by[n].summary.p99, pod_by[n].summary.p99)
            for n in CONNECT_LEVELS
            if n in conn_by
        },
        ttfa=ttfa,
        capacity=capacity,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(results.model_dump_json(indent=2) + "\n")
    write_bench_plot(results, out / "results.png")
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    sys.stdout.write(table)
    _say(
        f"done in {results.bench_seconds:.0f} s: {out / 'results.json'}, {out / 'results.png'}, {out / 'results.md'}"
    )
    return 0
