"""How many CPUs this process may use: the cgroup's CPU quota (a Kubernetes CPU limit), else the affinity mask.

``os.cpu_count()`` counts the node's cores: in a pod limited to 2 CPUs on a 48-core node, sizing thread
pools by it oversubscribes the quota and the kernel throttles every thread.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quota_cpus(cpu_max: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` → 2.0); ``None`` without a quota."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(cpu_max_path: Path = CGROUP_CPU_MAX) -> int:
    """Whole CPUs this process can keep busy (at least 1): the quota rounded up, never more than the CPUs
    it may be scheduled on."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        available = os.cpu_count() or 1
    try:
        quota = quota_cpus(cpu_max_path.read_text())
    except OSError:
        quota = None
    if quota is not None:
        available = min(available, math.ceil(quota))
    return max(1, available)
