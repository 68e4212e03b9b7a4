"""CPUs a process may use: a cgroup quota (a Kubernetes CPU limit) caps the cores it can be scheduled on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voicechat_common.cpus import quota_cpus, usable_cpus


@pytest.mark.parametrize(
    ("line", "cpus"),
    [
        ("max 100000\n", None),  # no limit
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("garbage", None),
        ("0 100000", None),
    ],
)
def test_quota_from_cpu_max(line: str, cpus: float | None) -> None:
    assert quota_cpus(line) == cpus


def test_usable_cpus_is_the_quota_rounded_up_within_the_affinity_mask(tmp_path: Path) -> None:
    available = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == available
    cpu_max.write_text("50000 100000\n")
    assert usable_cpus(cpu_max) == 1  # half a CPU still runs one thread
    cpu_max.write_text(f"{(available + 8) * 100000} 100000\n")
    assert usable_cpus(cpu_max) == available  # a quota above the cores does not add cores
    assert usable_cpus(tmp_path / "missing") == available  # cgroup v1 or no cgroup fs: the mask alone
