"""The operator's own check of an external (OpenAI-compatible) LLM: ``GET {url}/models`` with the API key.

It stands for the warm-up gate that in-cluster engines have: ``LLMReady`` of an external VoiceChat says what
this check found (reachable, key accepted, model listed) and how long it took. Every failure is a result with
a reason, never an exception, so a bad URL or key cannot crash-loop the operator.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

# Reasons of LLMReady for the external engine.
REACHABLE = "EndpointReachable"
SECRET_MISSING = "SecretMissing"
UNAUTHORIZED = "Unauthorized"
UNREACHABLE = "Unreachable"
MODEL_NOT_FOUND = "ModelNotFound"
BAD_RESPONSE = "UnexpectedResponse"


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str
    message: str
    latency_ms: int | None = None
    checked_at: str | None = None


def secret_value(secret: dict[str, Any] | None, key: str) -> str | None:
    """The decoded ``key`` of a Secret object, or None when the Secret or the key is missing or not text."""
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        return None


def models_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/models"


def _listed_models(payload: Any) -> list[str] | None:
    """Model ids of an OpenAI ``/models`` answer; None when it does not have that shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return None
    return [str(m["id"]) for m in payload["data"] if isinstance(m, dict) and "id" in m]


async def check_openai_endpoint(
    base_url: str, model: str, api_key: str | None, *, timeout_s: float, now: str
) -> CheckResult:
    """Probe ``GET {base_url}/models``; ``ok`` when it answers 2xx and (if it lists models) lists ``model``."""
    url = models_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(url, headers=headers, allow_redirects=False) as response,
        ):
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        timed_out = isinstance(exc, TimeoutError)
        detail = f"timed out after {timeout_s:g} s" if timed_out else str(exc) or type(exc).__name__
        return CheckResult(False, UNREACHABLE, f"GET {url}: {detail}", None, now)
    latency = round((time.monotonic() - started) * 1000)
    if status in (401, 403):
        hint = (
            "the key in llm.apiKeySecret was refused" if api_key else "it needs an API key (llm.apiKeySecret)"
        )
        return CheckResult(False, UNAUTHORIZED, f"GET {url}: HTTP {status}: {hint}", latency, now)
    if not 200 <= status < 300:
        # The status only, not the body: a VoiceChat author must not read other servers' answers through
        # the operator's status.
        return CheckResult(False, BAD_RESPONSE, f"GET {url}: HTTP {status}", latency, now)
    try:
        listed = _listed_models(json.loads(body))
    except ValueError:
        listed = None
    if listed and model not in listed:
        shown = ", ".join(listed[:10]) + (" …" if len(listed) > 10 else "")
        message = f"GET {url}: model {model!r} is not among the {len(listed)} listed ({shown})"
        return CheckResult(False, MODEL_NOT_FOUND, message, latency, now)
    verified = f"model {model} listed" if listed else "model not verified (the endpoint lists none)"
    return CheckResult(True, REACHABLE, f"GET {url}: HTTP {status} in {latency} ms; {verified}", latency, now)
