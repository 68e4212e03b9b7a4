"""What else the machine was doing during a measurement: CPU time of ours against everyone else's (Linux).

A benchmark on a shared machine is only comparable with another if one knows how busy the machine was. The
kernel's ``/proc/stat`` counts every CPU's time by state; ``/proc/PID/stat`` (or ``getrusage`` for reaped
children) counts what our own processes used. The difference is the other processes' share.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

# An "other processes" share above this is called a shared machine in the note.
IDLE_OTHERS_SHARE = 0.10
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_proc_stat(text: str) -> tuple[float, float]:
    """(busy, total) seconds of all CPUs from ``/proc/stat``'s ``cpu`` line; idle and iowait are not busy."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user/nice]
            ticks = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
            idle = ticks[3] + ticks[4]
            total = sum(ticks[:8])
            return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS
    raise ValueError("no aggregate cpu line in /proc/stat")


def parse_pid_stat(text: str) -> float:
    """User + system CPU seconds of one process (all its threads) from ``/proc/PID/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = text.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def self_and_children_cpu_s() -> float:
    """CPU seconds of this process and of its children that have exited and been waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pids_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds of running processes (a process that is gone counts nothing)."""
    total = 0.0
    for pid in pids:
        if (text := _read(f"/proc/{pid}/stat")) is not None:
            total += parse_pid_stat(text)
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    wall_s: float
    busy_s: float
    total_s: float
    ours_s: float

    @classmethod
    def take(cls, ours_s: float) -> CpuSnapshot | None:
        """None where ``/proc/stat`` cannot be read (not Linux)."""
        text = _read("/proc/stat")
        if text is None:
            return None
        busy, total = parse_proc_stat(text)
        return cls(time.monotonic(), busy, total, ours_s)


class CpuShare(BaseModel):
    """Shares of the machine's CPU capacity (all cores) over an interval, 0..1."""

    seconds: float
    busy: float = Field(description="All processes.")
    ours: float = Field(description="The benchmark and the services it started.")
    others: float = Field(description="Everything else (other users' jobs, the hypervisor's steal).")

    @classmethod
    def between(cls, start: CpuSnapshot, end: CpuSnapshot) -> CpuShare:
        capacity = max(end.total_s - start.total_s, 1e-9)
        busy = (end.busy_s - start.busy_s) / capacity
        ours = min(max((end.ours_s - start.ours_s) / capacity, 0.0), busy)
        return cls(
            seconds=round(end.wall_s - start.wall_s, 1),
            busy=round(busy, 3),
            ours=round(ours, 3),
            others=round(max(busy - ours, 0.0), 3),
        )


def describe(
    cores: int,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float] | None,
    share: CpuShare | None,
) -> str:
    """The machine note of a benchmark: what was measured, and what it means for the figures."""
    load = f"Load average (1 min) {load_start[0]:.1f} before, " + (
        f"{load_end[0]:.1f} after." if load_end is not None else "not measured after."
    )
    if share is None:
        return f"{load} CPU use of other processes not measured (no /proc/stat)."
    used = (
        f" Over the {share.seconds:.0f} s run the {cores} cores were {share.busy:.0%} busy: this benchmark and "
        f"its services {share.ours:.0%}, other processes {share.others:.0%} "
        f"(~{share.others * cores:.1f} cores)."
    )
    if share.others <= IDLE_OTHERS_SHARE:
        verdict = " The machine was otherwise nearly idle."
    else:
        verdict = (
            " Other jobs competed for the same cores, so the latencies are higher than on an idle machine of "
            "this size."
        )
    return load + used + verdict
