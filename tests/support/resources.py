"""This process's resident memory and open file descriptors (Linux /proc), for bounded-resource tests."""

from __future__ import annotations

import os
from pathlib import Path


def rss_bytes() -> int:
    """Resident set size now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
