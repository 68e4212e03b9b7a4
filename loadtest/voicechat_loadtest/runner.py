"""Runs many simulated users against one session service: ramp-up, concurrency cap, turns or duration."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from voicechat_loadtest.client import (
    DEFAULT_FRAME_MS,
    DEFAULT_MATCH_THRESHOLD,
    BadTargetError,
    ClientOptions,
    ConnectSample,
    TurnSample,
    VoiceClient,
    http_base,
    read_auth_key,
    ws_url,
)
from voicechat_loadtest.report import LoadReport, build_report
from voicechat_loadtest.speech import Speech, load_speech

READYZ_PATH = "/readyz"


class LoadConfig(BaseModel):
    url: str = Field(description="ws://HOST:PORT/ws or the service's http://HOST:PORT.")
    users: int = Field(1, ge=1, le=10_000, description="Simulated users (concurrent virtual users).")
    ramp_up_s: float = Field(0.0, ge=0, description="Users start evenly spread over this time.")
    concurrency: int | None = Field(
        None, ge=1, description="At most this many open connections at once (default: users)."
    )
    turns: int = Field(1, ge=1, description="Spoken turns per connection.")
    duration_s: float | None = Field(
        None,
        gt=0,
        description="Keep reconnecting users until this much time has passed (else one session each).",
    )
    think_time_s: tuple[float, float] = Field(
        (1.0, 2.0), description="Pause between turns: uniform [min, max]."
    )
    frame_ms: int = Field(DEFAULT_FRAME_MS, ge=10, le=100, description="Audio frame length sent per message.")
    connect_timeout_s: float = Field(30.0, gt=0)
    ready_timeout_s: float = Field(180.0, gt=0)
    turn_timeout_s: float = Field(60.0, gt=0)
    match_threshold: float = Field(DEFAULT_MATCH_THRESHOLD, ge=0, le=1)
    voice: str | None = None
    speed: float | None = Field(None, ge=0.5, le=2.0)
    speech_dir: Path | None = Field(
        None, description="Directory with manifest.json + WAVs (default: shipped)."
    )
    preflight: bool = Field(True, description="Check GET /readyz before starting.")
    auth_key_file: Path | None = Field(
        None, description="HS256 key of the service's access tokens: every user presents its own token."
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> LoadConfig:
        ws_url(self.url)  # raises BadTargetError for a malformed URL
        low, high = self.think_time_s
        if not 0 <= low <= high:
            raise ValueError(f"think time must be 0 <= min <= max, got {self.think_time_s}")
        return self

    def client_options(self) -> ClientOptions:
        return ClientOptions(
            frame_ms=self.frame_ms,
            connect_timeout_s=self.connect_timeout_s,
            ready_timeout_s=self.ready_timeout_s,
            turn_timeout_s=self.turn_timeout_s,
            match_threshold=self.match_threshold,
            voice=self.voice,
            speed=self.speed,
            auth_key=None if self.auth_key_file is None else read_auth_key(self.auth_key_file),
        )


async def preflight(url: str, timeout_s: float = 10.0) -> None:
    """Fail fast with one clear sentence when the target cannot serve: nothing there, not us, not ready."""
    readyz = http_base(url) + READYZ_PATH
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(readyz)
    except httpx.ConnectError as err:
        raise BadTargetError(f"cannot connect to {readyz}: is anything listening there? ({err})") from err
    except httpx.TimeoutException as err:
        raise BadTargetError(f"{readyz} did not answer within {timeout_s:.0f} s") from err
    except httpx.HTTPError as err:
        raise BadTargetError(f"{readyz}: {type(err).__name__}: {err}") from err
    if response.status_code == 200:
        return
    body = " ".join(response.text.split())[:200]
    with contextlib.suppress(ValueError, AttributeError):
        body = str(response.json().get("reason") or body)  # the service's readiness JSON says why
    if response.status_code == 503:
        raise BadTargetError(
            f"target not ready: {readyz} answered 503 (warming up, at max sessions, or draining): {body}"
        )
    if response.status_code == 404:
        raise BadTargetError(f"{readyz} answered 404: not a VoiceChat session service (wrong URL?)")
    raise BadTargetError(f"{readyz} answered HTTP {response.status_code}: {body}")


class _Progress:
    """tqdm bar over turns, with errors and the running median TTFA in its postfix."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="turn", desc="voicechat-loadtest", disable=not enabled, leave=True)
        self.errors = 0
        self.ttfa: list[float] = []

    def connect(self, sample: ConnectSample) -> None:
        if sample.error is not None:
            self.errors += 1
            self._postfix()

    def turn(self, sample: TurnSample) -> None:
        if sample.error is not None:
            self.errors += 1
        elif sample.ttfa_s is not None:
            self.ttfa.append(sample.ttfa_s)
        self.bar.update(1)
        self._postfix()

    def _postfix(self) -> None:
        median = sorted(self.ttfa)[len(self.ttfa) // 2] if self.ttfa else None
        self.bar.set_postfix(errors=self.errors, ttfa_p50=f"{median:.2f}s" if median is not None else "-")

    def close(self) -> None:
        self.bar.close()


async def run_load(
    config: LoadConfig, speeches: list[Speech] | None = None, progress: bool = True
) -> LoadReport:
    """Run the load test described by ``config``. Raises :class:`BadTargetError` when nothing could connect."""
    speeches = speeches or load_speech(config.speech_dir)
    options = config.client_options()  # reads the token key: a bad one fails before anything connects
    if config.preflight:
        await preflight(config.url)
    slots = asyncio.Semaphore(config.concurrency or config.users)
    origin = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    deadline = origin + config.duration_s if config.duration_s is not None else None
    connects: list[ConnectSample] = []
    turns: list[TurnSample] = []
    bar = _Progress(None if deadline else config.users * config.turns, progress)

    def time_left() -> bool:
        return deadline is not None and time.perf_counter() < deadline

    async def session(user: int, rng: random.Random) -> bool:
        """One connection: connect, then ``turns`` turns. Returns False when the connect failed."""
        client = VoiceClient(config.url, user, origin, options)
        conn = await client.connect()
        connects.append(conn)
        bar.connect(conn)
        if conn.error is not None:
            return False
        try:
            for k in range(config.turns):
                if k:
                    await asyncio.sleep(rng.uniform(*config.think_time_s))
                sample = await client.turn(rng.choice(speeches))
                turns.append(sample)
                bar.turn(sample)
                if sample.error == "closed":
                    conn.dropped = True
                    break
                if deadline is not None and not time_left():
                    break
        finally:
            await client.close()
        return True

    async def user(uid: int) -> None:
        await asyncio.sleep(uid * config.ramp_up_s / config.users)
        rng = random.Random(config.seed * 100_003 + uid)
        while True:
            async with slots:
                ok = await session(uid, rng)
            if not time_left():
                return
            # Back off after a failed connect so that a refusing target is not hammered in a loop.
            await asyncio.sleep(rng.uniform(*config.think_time_s) if ok else max(1.0, config.think_time_s[1]))

    try:
        await asyncio.gather(*(user(uid) for uid in range(config.users)))
    finally:
        bar.close()
    if connects and all(c.error is not None for c in connects):
        code, _ = Counter(c.error for c in connects).most_common(1)[0]
        first = next(c for c in connects if c.error == code)
        raise BadTargetError(
            f"no connection succeeded ({len(connects)} tried): {code}: {first.error_message}"
        )
    return build_report(
        target=ws_url(config.url),
        started_at=started_at,
        wall_s=time.perf_counter() - origin,
        config=config.model_dump(mode="json"),
        users=config.users,
        connects=sorted(connects, key=lambda c: c.at_s),
        turns=sorted(turns, key=lambda t: t.at_s),
    )
