"""The command line: bad configuration is one clear line on stderr and a non-zero exit, before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "0"], {}, "port: Input should be greater than or equal to 1"),
        ([], {"VOICECHAT_SESSION_SHARING": "everyone"}, "sharing: Input should be 'pod' or 'connection'"),
        (["--max-sessions", "many"], {}, "max_sessions"),
        # On loopback: a public address without a token key is refused first (test_security).
        (
            ["--system-prompt-file", "/nonexistent/prompt.txt", "--host", "127.0.0.1"],
            {},
            "/nonexistent/prompt.txt",
        ),
    ],
)
def test_bad_configuration_exits_with_one_line(args: list[str], env: dict[str, str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voicechat_session", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("voicechat-session: invalid configuration:")
    assert expected in lines[0]
