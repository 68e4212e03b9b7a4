"""The bench's machine note: CPU shares parsed from /proc and described in words."""

from __future__ import annotations

import os

import pytest

from voicechat_loadtest import machine
from voicechat_loadtest.machine import CpuShare, CpuSnapshot, describe, parse_pid_stat, parse_proc_stat

TICK = machine._CLOCK_TICKS


def test_parse_proc_stat_counts_idle_and_iowait_as_not_busy() -> None:
    text = f"cpu  {4 * TICK} {1 * TICK} {2 * TICK} {10 * TICK} {3 * TICK} 0 0 {1 * TICK} 0 0\ncpu0 1 2 3 4\n"
    busy, total = parse_proc_stat(text)
    assert (busy, total) == (8.0, 21.0)
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        parse_proc_stat("intr 1 2 3\n")


def test_parse_pid_stat_handles_spaces_and_parentheses_in_the_name() -> None:
    fields = ["S"] + ["0"] * 10 + [str(3 * TICK), str(2 * TICK)] + ["0"] * 30
    assert parse_pid_stat(f"123 (python -m (x)) {' '.join(fields)}") == 5.0


def test_this_process_is_measured() -> None:
    assert machine.pids_cpu_s([os.getpid()]) > 0
    assert machine.pids_cpu_s([2**22 + 12345]) == 0.0  # gone: counts nothing
    assert machine.self_and_children_cpu_s() > 0
    assert CpuSnapshot.take(0.0) is not None  # Linux


def test_cpu_share_between_snapshots() -> None:
    start = CpuSnapshot(wall_s=0.0, busy_s=100.0, total_s=200.0, ours_s=10.0)
    end = CpuSnapshot(wall_s=50.0, busy_s=180.0, total_s=300.0, ours_s=60.0)
    share = CpuShare.between(start, end)
    assert (share.seconds, share.busy, share.ours, share.others) == (50.0, 0.8, 0.5, 0.3)
    # Our time can never exceed what the whole machine was busy (clock granularity).
    assert CpuShare.between(start, CpuSnapshot(50.0, 110.0, 300.0, 60.0)).others == 0.0


def test_note_says_what_was_measured() -> None:
    idle = CpuShare(seconds=200, busy=0.55, ours=0.5, others=0.05)
    note = describe(2, (1.1, 1.0, 0.9), (2.5, 2.0, 1.0), idle)
    assert "Load average (1 min) 1.1 before, 2.5 after." in note
    assert "2 cores were 55% busy: this benchmark and its services 50%, other processes 5%" in note
    assert "otherwise nearly idle" in note
    busy = describe(2, (6.0, 5.0, 4.0), None, CpuShare(seconds=200, busy=1.0, ours=0.4, others=0.6))
    assert "other processes 60% (~1.2 cores)" in busy
    assert "Other jobs competed" in busy
    assert "nearly idle" not in busy
    assert "not measured" in describe(2, (1.0, 1.0, 1.0), None, None)
