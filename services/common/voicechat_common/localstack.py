"""Run the local stack: the LLM service on the embedded engine, then the session service wired to it.

``make up`` runs this module; the tests and the benchmark use :class:`LocalStack` so that every caller starts
the services the same way (real processes, real ports, readiness gates waited on with deadlines).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import httpx


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceStartError(RuntimeError):
    """A service exited or missed its readiness deadline; the message carries its last log lines."""


@dataclass
class ManagedProcess:
    """One service process started from this Python environment (``python -m PACKAGE``)."""

    name: str
    module: str
    ready_url: str
    env: Mapping[str, str]
    args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log_file: BinaryIO | None = field(default=None, repr=False)

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self._log_file = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT if self._log_file else None,
        )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(log not captured)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ServiceStartError(f"{self.name} exited with code {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.ready_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ServiceStartError(
                        f"{self.name} not ready at {self.ready_url} after {timeout_s:.0f}s:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the services drain), then SIGKILL after ``timeout_s``. Returns the exit code."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code


# The LLM engine's nice value on one machine, where it shares the cores with speech synthesis (on Kubernetes
# it is a pod of its own). Raising it lets a first phrase's synthesis go before the rest of the reply is
# generated; 0 until a quiet-machine bench shows the gain: on the shared development machine, nice 10 showed
# no first-phrase gain within the noise but cut the engine to 2-4 tokens/s under other users' load.
LOCAL_LLM_NICE = 0


@dataclass
class LocalStack:
    """LLM service (embedded llama.cpp engine) + session service on loopback ports."""

    host: str = "127.0.0.1"
    llm_engine_port: int = 8000
    llm_gate_port: int = 8001
    session_port: int = 8080
    with_session: bool = True
    llm_nice: int = LOCAL_LLM_NICE
    llm_env: dict[str, str] = field(default_factory=dict)
    session_env: dict[str, str] = field(default_factory=dict)
    resume_key: str = field(
        default_factory=lambda: os.environ.get("VOICECHAT_SESSION_RESUME_KEY") or secrets.token_urlsafe(32),
        repr=False,
    )
    """Seals resume tokens; shared by every session process this stack starts, so restarts resume."""
    # The engine's API key, given to both services (make up generates one; None: the engine is open).
    llm_api_key: str | None = field(default=None, repr=False)
    log_dir: Path | None = None
    llm_timeout_s: float = 180.0
    session_timeout_s: float = 240.0
    llm: ManagedProcess | None = None
    session: ManagedProcess | None = None

    @classmethod
    def on_free_ports(cls, **kwargs: object) -> LocalStack:
        return cls(llm_engine_port=free_port(), llm_gate_port=free_port(), session_port=free_port(), **kwargs)  # type: ignore[arg-type]

    @property
    def llm_api_url(self) -> str:
        return f"http://{self.host}:{self.llm_engine_port}/v1"

    @property
    def llm_gate_url(self) -> str:
        return f"http://{self.host}:{self.llm_gate_port}"

    @property
    def session_url(self) -> str:
        return f"http://{self.host}:{self.session_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.session_port}/ws"

    def _log(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def start_llm(self) -> None:
        self.llm = ManagedProcess(
            name="voicechat-llm",
            module="voicechat_llm",
            ready_url=f"{self.llm_gate_url}/readyz",
            env={
                "VOICECHAT_LLM_HOST": self.host,
                "VOICECHAT_LLM_ENGINE_PORT": str(self.llm_engine_port),
                "VOICECHAT_LLM_GATE_PORT": str(self.llm_gate_port),
                "VOICECHAT_LLM_NICE": str(self.llm_nice),
                **({"VOICECHAT_LLM_API_KEY": self.llm_api_key} if self.llm_api_key else {}),
                **self.llm_env,
            },
            log_path=self._log("llm"),
        )
        self.llm.start()
        self.llm.wait_ready(self.llm_timeout_s)

    def start_session(self, extra_env: Mapping[str, str] | None = None) -> ManagedProcess:
        self.session = ManagedProcess(
            name="voicechat-session",
            module="voicechat_session",
            ready_url=f"{self.session_url}/readyz",
            env={
                "VOICECHAT_SESSION_HOST": self.host,
                "VOICECHAT_SESSION_PORT": str(self.session_port),
                "VOICECHAT_SESSION_LLM_URL": self.llm_api_url,
                "VOICECHAT_SESSION_LLM_WARMUP_URL": f"{self.llm_gate_url}/warmup",
                "VOICECHAT_SESSION_RESUME_KEY": self.resume_key,
                **({"VOICECHAT_SESSION_LLM_API_KEY": self.llm_api_key} if self.llm_api_key else {}),
                **self.session_env,
                **(extra_env or {}),
            },
            log_path=self._log("session"),
        )
        self.session.start()
        self.session.wait_ready(self.session_timeout_s)
        return self.session

    def start(self) -> LocalStack:
        try:
            self.start_llm()
            if self.with_session:
                self.start_session()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Sessions first: they drain against a still-running LLM.
        for proc in (self.session, self.llm):
            if proc is not None:
                proc.stop()

    def processes(self) -> Iterator[ManagedProcess]:
        yield from (p for p in (self.llm, self.session) if p is not None)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make up", description="Run VoiceChat locally on the embedded models (Ctrl-C stops it)."
    )
    parser.add_argument("--host", default=os.environ.get("VOICECHAT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("VOICECHAT_PORT", "8080")))
    parser.add_argument("--llm-port", type=int, default=8000)
    parser.add_argument("--gate-port", type=int, default=8001)
    parser.add_argument("--llm-only", action="store_true", help="start only the LLM service")
    parser.add_argument(
        "--llm-nice",
        type=int,
        default=LOCAL_LLM_NICE,
        choices=range(20),
        metavar="0-19",
        help=f"nice value of the LLM engine's threads (default {LOCAL_LLM_NICE}; higher: speech synthesis first)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("VOICECHAT_LLM_LOG_FORMAT", "console")
    os.environ.setdefault("VOICECHAT_SESSION_LOG_FORMAT", "console")

    stack = LocalStack(
        host=args.host,
        llm_engine_port=args.llm_port,
        llm_gate_port=args.gate_port,
        session_port=args.port,
        with_session=not args.llm_only,
        llm_nice=args.llm_nice,
        # A fresh key per run: only the session service (and whoever reads this process) can use the engine.
        llm_api_key=os.environ.get("VOICECHAT_LLM_API_KEY") or secrets.token_urlsafe(32),
    )
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    # Explicit: a launcher started in the background inherits SIGINT ignored, and Ctrl-C must still stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.stderr.write("Starting the LLM service (embedded llama.cpp engine) and warming it up...\n")
        stack.start_llm()
        sys.stderr.write(
            f"LLM ready: OpenAI API at {stack.llm_api_url}, warm-up report at {stack.llm_gate_url}/warmup\n"
        )
        if stack.with_session:
            sys.stderr.write("Starting the session service (loading and warming STT + TTS)...\n")
            stack.start_session()
            sys.stdout.write(
                f"\nVoiceChat is ready: open {stack.session_url}/ in a browser "
                f"(WebSocket {stack.ws_url}). Ctrl-C stops it.\n\n"
            )
            sys.stdout.flush()
        while not stopping:
            dead = [p.name for p in stack.processes() if not p.running()]
            if dead:
                sys.stderr.write(f"{', '.join(dead)} exited; stopping the stack.\n")
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except ServiceStartError as err:
        sys.stderr.write(f"{err}\n")
        return 1
    finally:
        sys.stderr.write("Stopping...\n")
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
