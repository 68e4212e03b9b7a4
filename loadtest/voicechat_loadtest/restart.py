"""Restart mode: conversations against session processes that are restarted under them.

Starts a local stack (the LLM service, or an external OpenAI-compatible URL, and ``sessions`` session
processes sharing one resume key), runs ``users`` spoken conversations of ``turns`` turns each, and every
``restart_every_s`` seconds stops one session process (SIGTERM: it drains; or SIGKILL) and starts it again,
as a rollout does to pods. A user whose connection closes reconnects at once to the next process (as a
Service would route it), sends its newest resume token in ``start``, and checks that the restored history
holds every turn it completed. The report counts sessions resumed, resume failures, turns lost (in flight
when their process went away) and conversations that continued with their history intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from voicechat_common.localstack import LocalStack, free_port
from voicechat_loadtest import __version__
from voicechat_loadtest.client import ClientOptions, ConnectSample, TurnSample, VoiceClient
from voicechat_loadtest.speech import Speech, load_speech
from voicechat_session.protocol import ResumedMessage

LOST_ERRORS = frozenset({"closed", "shutting_down"})
"""Turn errors that mean "its process went away mid-turn", with a reply interrupted for ``shutdown`` (the
drain's grace ran out); anything else is an ordinary turn error."""
RECONNECT_PAUSE_S = 0.5
"""Pause after every process refused a connection once (all restarting): no tight loop."""


class RestartConfig(BaseModel):
    users: int = Field(4, ge=1, le=64, description="Simultaneous conversations.")
    turns: int = Field(6, ge=1, le=100, description="Spoken turns per conversation.")
    sessions: int = Field(2, ge=1, le=8, description="Session processes (pods) behind the users.")
    restart_every_s: float = Field(20.0, gt=0, description="One session process is restarted this often.")
    kill: bool = Field(False, description="SIGKILL instead of SIGTERM (no drain): a pod lost outright.")
    drain_grace_s: float = Field(20.0, ge=0, description="The session processes' drain grace.")
    think_time_s: tuple[float, float] = Field((1.0, 2.0), description="Pause between turns.")
    turn_timeout_s: float = Field(60.0, gt=0)
    ready_timeout_s: float = Field(60.0, gt=0)
    reconnect_timeout_s: float = Field(
        180.0, gt=0, description="Give a conversation up when no process accepts it for this long."
    )
    llm_url: str | None = Field(
        None, description="An OpenAI-compatible /v1 URL to use instead of starting the LLM service."
    )
    session_env: dict[str, str] = Field(
        default_factory=dict, description="Extra VOICECHAT_SESSION_* settings for the session processes."
    )
    speech_dir: Path | None = None
    seed: int = 0


class Restart(BaseModel):
    at_s: float
    session: int
    signal: Literal["SIGTERM", "SIGKILL"]
    down_s: float = Field(description="Signal → the process exited.")
    back_s: float = Field(description="Signal → the new process ready.")


class Conversation(BaseModel):
    user: int
    turns_ok: int = 0
    turns_lost: int = 0
    lost: list[str] = Field(default_factory=list, description="Why each lost turn was lost.")
    turn_errors: dict[str, int] = Field(default_factory=dict)
    connections: int = 0
    resumes_ok: int = 0
    resume_failures: dict[str, int] = Field(default_factory=dict)
    history_mismatches: list[str] = Field(
        default_factory=list, description="Completed turns missing from a restored history."
    )
    gave_up: bool = False

    @property
    def continued(self) -> bool:
        """Every reconnect resumed with the whole history, and the conversation ran to its end."""
        return not self.gave_up and not self.resume_failures and not self.history_mismatches


class RestartReport(BaseModel):
    tool: str = "voicechat-loadtest restart"
    version: str = __version__
    started_at: str
    wall_s: float
    config: dict[str, object]
    restarts: list[Restart]
    users: int
    conversations_continued: int
    reconnects: int = Field(description="Connections after a conversation's first.")
    sessions_resumed: int
    resume_failures: dict[str, int]
    turns_total: int
    turns_ok: int
    turns_lost: int
    turn_errors: dict[str, int]
    connect_refusals: dict[str, int] = Field(
        description="Connection attempts refused (e.g. while restarting)."
    )
    conversations: list[Conversation]


def history_gaps(completed: Sequence[str], resumed: ResumedMessage) -> list[str]:
    """The completed turns' transcripts that the restored history does not hold (in order)."""
    restored = [m.content for m in resumed.messages if m.role == "user"]
    text = "\n".join(restored)
    missing: list[str] = []
    position = 0
    for transcript in completed:
        found = text.find(transcript, position) if transcript else position
        if found < 0:
            missing.append(transcript)
        else:
            position = found + len(transcript)
    return missing


def build_report(
    *,
    started_at: str,
    wall_s: float,
    config: RestartConfig,
    restarts: Sequence[Restart],
    conversations: Sequence[Conversation],
    connects: Sequence[ConnectSample],
) -> RestartReport:
    failures: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for c in conversations:
        failures.update(c.resume_failures)
        errors.update(c.turn_errors)
    return RestartReport(
        started_at=started_at,
        wall_s=round(wall_s, 1),
        config=config.model_dump(mode="json"),
        restarts=list(restarts),
        users=len(conversations),
        conversations_continued=sum(c.continued for c in conversations),
        reconnects=sum(max(0, c.connections - 1) for c in conversations),
        sessions_resumed=sum(c.resumes_ok for c in conversations),
        resume_failures=dict(failures),
        turns_total=sum(c.turns_ok + c.turns_lost + sum(c.turn_errors.values()) for c in conversations),
        turns_ok=sum(c.turns_ok for c in conversations),
        turns_lost=sum(c.turns_lost for c in conversations),
        turn_errors=dict(errors),
        connect_refusals=dict(Counter(c.error for c in connects if c.error is not None)),
        conversations=sorted(conversations, key=lambda c: c.user),
    )


def format_summary(report: RestartReport) -> str:
    how = "SIGKILL" if report.config.get("kill") else "SIGTERM (drain)"
    lines = [
        f"restarts: {len(report.restarts)} x {how} over {report.wall_s:.0f} s, "
        f"{report.config.get('sessions')} session processes, {report.users} users",
        f"conversations continued with their history: {report.conversations_continued}/{report.users}",
        f"sessions resumed: {report.sessions_resumed} of {report.reconnects} reconnects"
        + (f"; resume failures: {report.resume_failures}" if report.resume_failures else ""),
        f"turns: {report.turns_total}, completed {report.turns_ok}, lost {report.turns_lost}"
        + (f", other errors {report.turn_errors}" if report.turn_errors else ""),
    ]
    if report.connect_refusals:
        lines.append(f"connection attempts refused while processes restarted: {report.connect_refusals}")
    return "\n".join(lines)


@dataclasses.dataclass
class _Pods:
    """The session processes: each a LocalStack sharing the LLM, its ports and the resume key."""

    stacks: list[LocalStack]

    @property
    def urls(self) -> list[str]:
        return [s.ws_url for s in self.stacks]

    def restart(self, index: int, kill: bool) -> tuple[float, float]:
        """Stop process ``index`` and start it again: (seconds until it exited, until the new one is ready)."""
        stack = self.stacks[index]
        started = time.perf_counter()
        proc = stack.session
        if proc is not None:
            if kill and proc.proc is not None:
                proc.proc.send_signal(signal.SIGKILL)
            proc.stop(timeout_s=120.0)
        down = time.perf_counter() - started
        stack.start_session()
        return down, time.perf_counter() - started

    def stop(self) -> None:
        for stack in self.stacks:
            if stack.session is not None:
                stack.session.stop()


async def run_restart(config: RestartConfig, log_dir: Path | None = None) -> RestartReport:
    speeches = load_speech(config.speech_dir)
    session_env = {"VOICECHAT_SESSION_DRAIN_GRACE_S": str(config.drain_grace_s), **config.session_env}
    base = LocalStack.on_free_ports(with_session=False, log_dir=log_dir, session_env=session_env)
    pods = _Pods([])
    try:
        if config.llm_url is None:
            await asyncio.to_thread(base.start_llm)
        else:
            base.session_env = {"VOICECHAT_SESSION_LLM_URL": config.llm_url, **session_env}
        for index in range(config.sessions):
            stack = dataclasses.replace(
                base, session_port=free_port(), llm=None, session=None, log_dir=_sub(log_dir, index)
            )
            pods.stacks.append(stack)
            await asyncio.to_thread(stack.start_session)
        return await _drive(config, pods, speeches)
    finally:
        await asyncio.to_thread(pods.stop)
        await asyncio.to_thread(base.stop)


def _sub(log_dir: Path | None, index: int) -> Path | None:
    return None if log_dir is None else log_dir / f"session-{index}"


async def _drive(config: RestartConfig, pods: _Pods, speeches: list[Speech]) -> RestartReport:
    origin = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    options = ClientOptions(turn_timeout_s=config.turn_timeout_s, ready_timeout_s=config.ready_timeout_s)
    connects: list[ConnectSample] = []
    restarts: list[Restart] = []
    urls = pods.urls

    async def connect_any(user: int, first: int) -> VoiceClient | None:
        deadline = time.perf_counter() + config.reconnect_timeout_s
        attempt = 0
        while time.perf_counter() < deadline:
            client = VoiceClient(urls[(first + attempt) % len(urls)], user, origin, options)
            sample = await client.connect()
            connects.append(sample)
            if sample.error is None:
                return client
            attempt += 1
            if attempt % len(urls) == 0:
                await asyncio.sleep(RECONNECT_PAUSE_S)
        return None

    async def conversation(user: int) -> Conversation:
        rng = random.Random(config.seed * 100_003 + user)
        result = Conversation(user=user)
        completed: list[str] = []
        client: VoiceClient | None = None
        token: str | None = None
        turn = 0
        try:
            while turn < config.turns:
                if client is None or client.closed:
                    if client is not None:
                        token = client.resume_token or token
                        await client.close()
                    # The next process along: the one that just closed us is going away.
                    client = await connect_any(user, user + result.connections)
                    if client is None:
                        result.gave_up = True
                        break
                    result.connections += 1
                    if token is None:
                        continue
                    answer = await client.resume(speeches[0].sample_rate, token)
                    if answer is None:
                        if not client.closed:
                            result.resume_failures["no_answer"] = (
                                result.resume_failures.get("no_answer", 0) + 1
                            )
                        continue
                    if answer.resumed:
                        result.resumes_ok += 1
                        result.history_mismatches += history_gaps(completed, answer)
                    else:
                        code = answer.error or "unknown"
                        result.resume_failures[code] = result.resume_failures.get(code, 0) + 1
                        completed.clear()  # a fresh conversation from here
                    continue
                sample: TurnSample = await client.turn(rng.choice(speeches))
                turn += 1
                if sample.error is None:
                    result.turns_ok += 1
                    if sample.transcript:
                        completed.append(sample.transcript)
                elif sample.error in LOST_ERRORS or sample.interrupt_reason == "shutdown" or client.closed:
                    result.turns_lost += 1
                    result.lost.append(f"turn {turn} at {sample.at_s:.1f} s: {sample.error_message}")
                else:
                    result.turn_errors[sample.error] = result.turn_errors.get(sample.error, 0) + 1
                if turn < config.turns:
                    await asyncio.sleep(rng.uniform(*config.think_time_s))
        finally:
            if client is not None:
                await client.close()
        return result

    async def restarter(stop: asyncio.Event) -> None:
        index = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), config.restart_every_s)
                return
            at = time.perf_counter() - origin
            session = index % len(pods.stacks)
            down, back = await asyncio.to_thread(pods.restart, session, config.kill)
            restarts.append(
                Restart(
                    at_s=round(at, 2),
                    session=session,
                    signal="SIGKILL" if config.kill else "SIGTERM",
                    down_s=round(down, 2),
                    back_s=round(back, 2),
                )
            )
            index += 1

    stop = asyncio.Event()
    restarting = asyncio.create_task(restarter(stop))
    try:
        conversations = await asyncio.gather(*(conversation(u) for u in range(config.users)))
    finally:
        stop.set()
        await restarting
    return build_report(
        started_at=started_at,
        wall_s=time.perf_counter() - origin,
        config=config,
        restarts=restarts,
        conversations=conversations,
        connects=connects,
    )


def run_restart_cli(config: RestartConfig, out: Path) -> int:
    """Run, write ``restart.json`` under ``out``, print the summary; 1 when a conversation did not continue."""
    out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run_restart(config, log_dir=out / "logs"))
    path = out / "restart.json"
    path.write_text(report.model_dump_json(indent=2) + "\n")
    sys.stdout.write(format_summary(report) + f"\nresults: {path}\n")
    return 0 if report.conversations_continued == report.users else 1
