"""The real ``voicechat-llm`` command line: --help, and each wrong configuration → one clear line, exit ≠ 0."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.llm_service import run_cli
from voicechat_common.localstack import free_port
from voicechat_llm.main import EXIT_BAD_CONFIG
from voicechat_llm.settings import LLMSettings


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert a configuration failure: exit 2, exactly one stderr line, no traceback, naming the fix."""
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("voicechat-llm: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_help_lists_every_setting_with_its_description() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for name, field in LLMSettings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, name
        assert field.description, f"{name} has no description"
        assert " ".join(field.description.split()) in text, name


def test_unknown_engine() -> None:
    _one_line_error(
        run_cli(env={"VOICECHAT_LLM_ENGINE": "tensorrt"}), "VOICECHAT_LLM_ENGINE", "'llamacpp' or 'vllm'"
    )


def test_unknown_flag() -> None:
    _one_line_error(run_cli("--no-such-flag", "1"), "unrecognized arguments: --no-such-flag")


def test_flag_overrides_environment(tmp_path: Path) -> None:
    # The env would be an error; the flag wins, so the error is about the (missing) model instead.
    line = _one_line_error(
        run_cli(
            "--engine",
            "llamacpp",
            "--model",
            str(tmp_path / "missing.gguf"),
            env={"VOICECHAT_LLM_ENGINE": "x"},
        ),
        "model file not found",
    )
    assert "ENGINE" not in line


def test_missing_model_file(tmp_path: Path) -> None:
    _one_line_error(
        run_cli("--model", str(tmp_path / "missing.gguf")),
        "model file not found",
        "--model / VOICECHAT_LLM_MODEL",
    )


def test_model_that_is_not_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"\x00" * 64)
    _one_line_error(run_cli("--model", str(bogus)), "is not a GGUF file")


def test_vllm_not_installed() -> None:
    # PATH without any vllm: the default executable name cannot be found.
    _one_line_error(
        run_cli("--engine", "vllm", env={"PATH": "/usr/bin:/bin"}),
        "vllm CLI 'vllm' was not found",
        "--vllm-executable",
    )


def test_missing_system_prompt_file(tmp_path: Path) -> None:
    _one_line_error(
        run_cli("--system-prompt-file", str(tmp_path / "prompt.txt")),
        "cannot read the system prompt file",
        "VOICECHAT_LLM_SYSTEM_PROMPT_FILE",
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("flag", "env_name"), [("--engine-port", "ENGINE_PORT"), ("--gate-port", "GATE_PORT")]
)
def test_port_in_use(busy_port: int, flag: str, env_name: str) -> None:
    other = "--gate-port" if flag == "--engine-port" else "--engine-port"
    result = run_cli("--host", "127.0.0.1", flag, str(busy_port), other, str(free_port()))
    _one_line_error(result, f"port {busy_port}", "already in use", f"VOICECHAT_LLM_{env_name}")


def test_same_port_for_engine_and_gate() -> None:
    port = str(free_port())
    _one_line_error(run_cli("--engine-port", port, "--gate-port", port), "both")
