"""Resume tokens: a conversation's state, sealed by the server and kept by the client.

Session pods stay stateless: after every finished turn the client gets an opaque token holding what the
conversation needs to continue elsewhere (history within the budget, voice, speed, session id, issue time).
Any session pod of the same VoiceChat can open it, because they share the key; nobody else can read or forge
one. A token that cannot be opened is never fatal: the caller starts a fresh session and reports why.

Format (version 1): ``v1.<kid>.<base64url(nonce ‖ AES-256-GCM ciphertext ‖ tag)>``. ``kid`` names the key
(a hash of it, not the key) so a token sealed under a key this pod does not hold is told apart from a
tampered one; the ``v1.<kid>`` header is authenticated as associated data. The plaintext is the JSON of
:class:`ResumeState`. It is not compressed: compressing attacker-influenced text next to other state before
encryption leaks through the length, and the budget fits without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicechat_session import metrics
from voicechat_session.resume_size import (
    KID_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    TOKEN_VERSION,
    b64encode,
    max_plaintext_bytes,
    max_token_chars,
)
from voicechat_session.settings import SessionSettings

MIN_SECRET_CHARS = 32
"""A configured key is at least this long (e.g. ``openssl rand -base64 32`` → 44 characters)."""
CLOCK_SKEW_S = 60.0
"""Pods' clocks may disagree this much: a token "issued" a little in the future is still accepted."""

log = logging.getLogger(__name__)

_HKDF_INFO = b"voicechat resume token v1"


class ResumeFailure(StrEnum):
    """Why a token was not accepted; also the ``outcome`` label of ``voicechat_session_resumes_total``."""

    EXPIRED = "expired"
    """Older than the TTL."""
    INVALID = "invalid"
    """Authentication failed (tampered, truncated or forged) or issued implausibly far in the future."""
    FOREIGN_KEY = "foreign_key"
    """Sealed under a key this pod does not hold (another VoiceChat, or a key rotated out)."""
    OVERSIZED = "oversized"
    """Longer than any token this configuration can issue; refused before any work is done."""
    MALFORMED = "malformed"
    """Not a token of a known format."""


class ResumeError(Exception):
    def __init__(self, failure: ResumeFailure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class ResumeTurn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    content: str


class ResumeState(BaseModel):
    """What a conversation needs to continue on another pod (the system prompt is the pod's own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str = Field(min_length=1, max_length=64)
    issued_at: float = Field(description="Unix time the token was sealed.")
    voice: str = Field(max_length=64)
    speed: float = Field(ge=0.5, le=2.0)
    history: list[ResumeTurn] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------------ keys
def derive_key(secret: str) -> bytes:
    """The AES-256 key of a configured secret (any string of at least ``MIN_SECRET_CHARS`` characters).

    HKDF lets the Secret hold any random text (what ``openssl rand`` or the operator writes) rather than
    exactly 32 raw bytes.
    """
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"a resume key needs at least {MIN_SECRET_CHARS} characters, got {len(secret)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret.encode("utf-8"))


def generate_secret() -> str:
    """A fresh random key in the form the settings and the Kubernetes Secret hold."""
    return b64encode(os.urandom(32))


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class _Key:
    kid: str
    aead: AESGCM


class KeyRing:
    """The current key (seals and opens) and previous keys (open only), so a rotation keeps live tokens."""

    def __init__(self, current: str, previous: Iterable[str] = ()) -> None:
        self._current = self._key(current)
        self._keys = {self._current.kid: self._current}
        for secret in previous:
            key = self._key(secret)
            self._keys.setdefault(key.kid, key)

    @staticmethod
    def _key(secret: str) -> _Key:
        raw = derive_key(secret)
        kid = b64encode(hashlib.sha256(raw).digest()[:KID_BYTES])
        return _Key(kid, AESGCM(raw))

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """A key for this process only (no key configured): tokens resume only on this process."""
        return cls(generate_secret())

    @property
    def current_kid(self) -> str:
        return self._current.kid

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, header: str, plaintext: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.aead.encrypt(nonce, plaintext, header.encode("ascii"))
        return b64encode(nonce + sealed)

    def open(self, kid: str, header: str, body: bytes) -> bytes:
        key = self._keys.get(kid)
        if key is None:
            raise ResumeError(ResumeFailure.FOREIGN_KEY, "the token was sealed under a key this server lacks")
        nonce, sealed = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            return key.aead.decrypt(nonce, sealed, header.encode("ascii"))
        except InvalidTag:
            raise ResumeError(ResumeFailure.INVALID, "the token failed authentication") from None


def read_secret(path: Path) -> str:
    """A key from a file (a mounted Secret): its text without surrounding whitespace."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the resume key file {path}: {exc.strerror or exc}") from exc
    if not secret:
        raise ValueError(f"the resume key file {path} is empty")
    return secret


# ------------------------------------------------------------------------------------------ the codec
@dataclass(frozen=True)
class Resumed:
    state: ResumeState
    age_s: float


class ResumeCodec:
    """Seals conversation state into tokens and opens them, within a TTL and a size bound."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        ttl_s: float,
        max_frame_bytes: int,
        history_max_messages: int,
        history_max_chars: int,
    ) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self.max_token_chars = max_token_chars(max_frame_bytes)
        self._max_plaintext = max_plaintext_bytes(max_frame_bytes)
        self._max_messages = history_max_messages
        self._max_chars = history_max_chars

    def seal(
        self,
        *,
        session_id: str,
        voice: str,
        speed: float,
        history: Sequence[ResumeTurn],
        now: float | None = None,
    ) -> str:
        """A token for this state. The history is cut to the budget (oldest first) and, for pathological
        text whose JSON is far longer than its characters, further until the token fits the frame limit."""
        turns = self._within_budget(history)
        issued_at = time.time() if now is None else now
        while True:
            state = ResumeState(
                session_id=session_id, issued_at=issued_at, voice=voice, speed=speed, history=turns
            )
            plaintext = state.model_dump_json().encode("utf-8")
            if len(plaintext) <= self._max_plaintext or not turns:
                break
            turns = _opening_with_user(turns[1:])
        kid = self.keys.current_kid
        header = f"{TOKEN_VERSION}.{kid}"
        token = f"{header}.{self.keys.seal(header, plaintext)}"
        if len(token) > self.max_token_chars:
            # Only an absurd voice name or session id could get here (both are length-bounded).
            raise ValueError(f"resume token of {len(token)} chars exceeds {self.max_token_chars}")
        return token

    def open(self, token: str, *, now: float | None = None) -> Resumed:
        """The state inside ``token``; :class:`ResumeError` says why when there is none to use."""
        if len(token) > self.max_token_chars:
            raise ResumeError(
                ResumeFailure.OVERSIZED,
                f"the token has {len(token)} characters; tokens here have at most {self.max_token_chars}",
            )
        parts = token.split(".")
        if len(parts) != 3 or not token.isascii():
            raise ResumeError(ResumeFailure.MALFORMED, "not a resume token")
        version, kid, body_text = parts
        if version != TOKEN_VERSION:
            raise ResumeError(ResumeFailure.MALFORMED, f"unknown token version {version[:8]!r}")
        try:
            body = _b64decode(body_text)
        except (binascii.Error, ValueError):
            raise ResumeError(ResumeFailure.MALFORMED, "the token is not base64url") from None
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise ResumeError(ResumeFailure.MALFORMED, "the token is too short")
        plaintext = self.keys.open(kid, f"{version}.{kid}", body)
        try:
            state = ResumeState.model_validate_json(plaintext)
        except ValidationError:
            # Authentic but unreadable: sealed by a build with another state schema.
            raise ResumeError(ResumeFailure.MALFORMED, "the token's state has an unknown shape") from None
        now = time.time() if now is None else now
        age_s = now - state.issued_at
        if age_s > self.ttl_s:
            raise ResumeError(
                ResumeFailure.EXPIRED, f"the token is {age_s:.0f} s old; tokens last {self.ttl_s:g} s"
            )
        if age_s < -CLOCK_SKEW_S:
            raise ResumeError(ResumeFailure.INVALID, "the token was issued in the future")
        history = self._within_budget(state.history)
        if history != state.history:
            # This pod's budget may be smaller than the sealing pod's: apply ours.
            state = state.model_copy(update={"history": history})
        return Resumed(state=state, age_s=max(0.0, age_s))

    def _within_budget(self, history: Sequence[ResumeTurn]) -> list[ResumeTurn]:
        """The newest messages within the message and character budget, opening with a user message.

        Unlike the live history, a single message over the character budget is cut here too (keeping its
        end, the part the conversation continued from), so a token's size never depends on one message.
        """
        turns = [t for t in history if t.content]
        keep: list[ResumeTurn] = []
        chars = 0
        for turn in reversed(turns):
            if len(keep) + 1 >= self._max_messages:  # the system prompt counts as one message
                break
            room = self._max_chars - chars
            if room <= 0:
                break
            if len(turn.content) > room:
                if keep:
                    break
                turn = ResumeTurn(role=turn.role, content=turn.content[-room:])
            keep.append(turn)
            chars += len(turn.content)
        keep.reverse()
        return _opening_with_user(keep)


def _opening_with_user(turns: Sequence[ResumeTurn]) -> list[ResumeTurn]:
    """Drop leading assistant messages: a conversation opens with the user (chat templates expect it)."""
    start = 0
    while start < len(turns) and turns[start].role == "assistant":
        start += 1
    return list(turns[start:])


def describe(token: str) -> dict[str, str]:
    """The non-secret parts of a token, for logs (never the body)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {"format": "unknown", "chars": str(len(token))}
    return {"version": parts[0][:8], "kid": parts[1][:16], "chars": str(len(token))}


def key_ring_from_settings(settings: SessionSettings) -> KeyRing | None:
    """The configured keys (files first: a mounted Secret), or None when none is configured."""
    current = (
        read_secret(settings.resume_key_file)
        if settings.resume_key_file is not None
        else (settings.resume_key.get_secret_value() if settings.resume_key is not None else None)
    )
    previous_file = settings.resume_previous_key_file
    previous = (
        # A mounted Secret holds its previous key only during a rotation: no file, no previous key.
        (read_secret(previous_file) if previous_file.exists() else None)
        if previous_file is not None
        else (
            settings.resume_previous_key.get_secret_value()
            if settings.resume_previous_key is not None
            else None
        )
    )
    if current is None:
        if previous is not None:
            raise ValueError("a previous resume key is set without a current one")
        return None
    return KeyRing(current, [previous] if previous else [])


def codec_from_settings(settings: SessionSettings) -> ResumeCodec:
    """The pod's codec: the configured keys, or (none configured) a key of this process, logged as such."""
    keys = key_ring_from_settings(settings)
    if keys is None:
        log.warning(
            "no resume key configured: conversations resume only on this process "
            "(set VOICECHAT_SESSION_RESUME_KEY or VOICECHAT_SESSION_RESUME_KEY_FILE on every pod)"
        )
        keys = KeyRing.ephemeral()
    return ResumeCodec(
        keys,
        ttl_s=settings.resume_ttl_s,
        max_frame_bytes=settings.max_frame_bytes,
        history_max_messages=settings.history_max_messages,
        history_max_chars=settings.history_max_chars,
    )


def attempt(codec: ResumeCodec, token: str, *, now: float | None = None) -> Resumed | ResumeError:
    """Open a client's token, counting the outcome; never raises for anything the client sent."""
    try:
        resumed = codec.open(token, now=now)
    except ResumeError as exc:
        metrics.RESUMES_TOTAL.labels(outcome=exc.failure.value).inc()
        log.info(
            "resume refused", extra={"outcome": exc.failure.value, "detail": exc.detail, **describe(token)}
        )
        return exc
    metrics.RESUMES_TOTAL.labels(outcome="ok").inc()
    return resumed
