"""Per-client limits: sessions per token subject and per client IP, connections per IP per minute (pod-wide,
:class:`ClientLimits`), and per-session rates: turns and LLM tokens per minute, error events per second
(:class:`SessionRates`). Refusals carry the protocol's error code and are counted in metrics."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from voicechat_session import metrics
from voicechat_session.auth import Identity
from voicechat_session.protocol import ErrorCode
from voicechat_session.settings import SessionSettings

WINDOW_S = 60.0


class SlidingWindow:
    """Events in the last ``window_s`` seconds (timestamps kept, at most ``limit`` + 1 of them)."""

    def __init__(self, limit: int, window_s: float = WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        while self._events and now - self._events[0][0] >= self.window_s:
            self._total -= self._events.popleft()[1]

    def allow(self, cost: int = 1, now: float | None = None) -> bool:
        """Record ``cost`` if it fits in the window; False (nothing recorded) when it does not."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        if self._total + cost > self.limit:
            return False
        self._events.append((now, cost))
        self._total += cost
        return True

    def empty(self, now: float) -> bool:
        self._expire(now)
        return not self._events


@dataclass
class ClientLimits:
    """Pod-wide limits per subject and per IP. Counting happens in :meth:`admit` / :meth:`release`."""

    settings: SessionSettings
    by_subject: Counter[str] = field(default_factory=Counter)
    by_ip: Counter[str] = field(default_factory=Counter)
    connects: dict[str, SlidingWindow] = field(default_factory=dict)

    def admit(self, identity: Identity, ip: str) -> tuple[ErrorCode, str] | None:
        """Count a new session, or say why it is refused (nothing counted then)."""
        s = self.settings
        if ip in s.limit_exempt_ips:
            return self._admit_subject(identity)
        window = self.connects.get(ip)
        if window is None:
            if len(self.connects) > 10_000:  # bounded: forget IPs whose window is empty
                self._forget_quiet_ips()
            window = self.connects[ip] = SlidingWindow(s.max_connects_per_ip_per_min)
        if not window.allow():
            return self._refuse(
                "rate_limited", f"more than {s.max_connects_per_ip_per_min} connections a minute"
            )
        if self.by_ip[ip] >= s.max_sessions_per_ip:
            return self._refuse("too_many_sessions", f"at most {s.max_sessions_per_ip} sessions per client")
        refusal = self._admit_subject(identity)
        if refusal is None:
            self.by_ip[ip] += 1
        return refusal

    def _admit_subject(self, identity: Identity) -> tuple[ErrorCode, str] | None:
        s = self.settings
        if identity.subject is not None:
            cap = min(s.max_sessions_per_subject, identity.limits.max_sessions or s.max_sessions_per_subject)
            if self.by_subject[identity.subject] >= cap:
                return self._refuse("too_many_sessions", f"at most {cap} sessions per user")
            self.by_subject[identity.subject] += 1
        return None

    def release(self, identity: Identity, ip: str) -> None:
        if ip in self.by_ip:
            self.by_ip[ip] -= 1
            if self.by_ip[ip] <= 0:
                del self.by_ip[ip]
        if identity.subject is not None:
            self.by_subject[identity.subject] -= 1
            if self.by_subject[identity.subject] <= 0:
                del self.by_subject[identity.subject]

    def _forget_quiet_ips(self) -> None:
        now = time.monotonic()
        for ip in [ip for ip, w in self.connects.items() if w.empty(now)]:
            del self.connects[ip]

    @staticmethod
    def _refuse(code: ErrorCode, reason: str) -> tuple[ErrorCode, str]:
        metrics.LIMITS_HIT_TOTAL.labels(limit=code).inc()
        return code, reason


class SessionRates:
    """One session's rates: turns and LLM tokens per minute, error events per second and per minute."""

    def __init__(self, settings: SessionSettings, identity: Identity) -> None:
        lim = identity.limits
        self.turns = SlidingWindow(
            min(settings.max_turns_per_min, lim.turns_per_min or settings.max_turns_per_min)
        )
        tokens = min(
            settings.max_llm_tokens_per_min, lim.llm_tokens_per_min or settings.max_llm_tokens_per_min
        )
        self.llm_tokens = SlidingWindow(tokens)
        self.tokens_per_turn = settings.llm_max_tokens
        self.errors_shown = SlidingWindow(settings.max_errors_per_s, window_s=1.0)
        self.errors = SlidingWindow(settings.max_errors_per_min)
        self.errors_suppressed = 0

    def turn_refusal(self) -> str | None:
        """None when a new turn may start (and it is counted), else why not. A turn reserves its
        ``max_tokens`` of the LLM budget: the reply can use no more."""
        if not self.turns.allow():
            metrics.LIMITS_HIT_TOTAL.labels(limit="turns_per_min").inc()
            return f"more than {self.turns.limit} turns a minute; wait a moment"
        if not self.llm_tokens.allow(self.tokens_per_turn):
            metrics.LIMITS_HIT_TOTAL.labels(limit="llm_tokens_per_min").inc()
            return f"more than {self.llm_tokens.limit} LLM tokens a minute; wait a moment"
        return None

    def error(self) -> tuple[bool, bool]:
        """Count a client error: (show it to the client?, close the session now?)."""
        if not self.errors.allow():
            metrics.LIMITS_HIT_TOTAL.labels(limit="errors_per_min").inc()
            return False, True
        if self.errors_shown.allow():
            return True, False
        self.errors_suppressed += 1
        metrics.ERRORS_SUPPRESSED_TOTAL.inc()
        return False, False
