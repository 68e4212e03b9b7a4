"""Access tokens: short-lived JWTs minted by the application's backend, verified before a session exists.

A token carries a subject (``sub``), an audience (``aud``, default ``voicechat``), ``iat`` and ``exp`` (at most
``auth_max_ttl_s`` apart) and optional per-token limits (``limits``: ``max_sessions``, ``turns_per_min``,
``llm_tokens_per_min``), which can only tighten the service's own. Keys: an HS256 shared key (a Secret), or a
public key / JWKS file for RS256/ES256 tokens signed elsewhere.

Transport (never the query string, which proxies log): the WebSocket subprotocol list
``["voicechat", "token.<jwt>"]`` (JWT characters are all HTTP token characters, so browsers accept it), or a
first message ``{"type": "auth", "token": "<jwt>"}`` within ``auth_timeout_s``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicechat_session.settings import SessionSettings

SUBPROTOCOL = "voicechat"
TOKEN_PREFIX = "token."
ALGORITHMS_SHARED = ["HS256"]
ALGORITHMS_PUBLIC = ["RS256", "ES256"]
MIN_KEY_BYTES = 32
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class TokenLimits(BaseModel):
    """Optional limits in a token; each only tightens the service's own setting."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_sessions: int | None = Field(None, ge=1)
    turns_per_min: int | None = Field(None, ge=1)
    llm_tokens_per_min: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class Identity:
    """Who a session belongs to: the token's subject (``None`` when auth is off) and its limits."""

    subject: str | None
    limits: TokenLimits
    expires_at: float | None = None


ANONYMOUS = Identity(subject=None, limits=TokenLimits())


class AuthError(Exception):
    """A token was missing or refused; the message is safe to show the client."""


class AuthConfigError(Exception):
    """The service's auth configuration is unusable (one line for the operator)."""


class TokenVerifier:
    """Verifies access tokens against the configured key(s). ``enabled`` is False when no key is set."""

    def __init__(self, settings: SessionSettings) -> None:
        self.audience = settings.auth_audience
        self.issuer = settings.auth_issuer
        self.max_ttl_s = settings.auth_max_ttl_s
        self._shared: bytes | None = None
        self._public: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        try:
            if settings.auth_key is not None:
                self._shared = settings.auth_key.get_secret_value().encode()
            if settings.auth_key_file is not None:
                self._shared = settings.auth_key_file.read_bytes().strip()
            if settings.auth_public_key_file is not None:
                self._public = settings.auth_public_key_file.read_bytes()
            if settings.auth_jwks_file is not None:
                self._jwks = jwt.PyJWKSet.from_json(settings.auth_jwks_file.read_text())
        except (OSError, jwt.PyJWTError, ValueError) as exc:
            raise AuthConfigError(f"access-token key: {exc}") from exc
        if self._shared is not None and len(self._shared) < 32:
            raise AuthConfigError(
                "auth key: an HS256 key needs at least 32 bytes (e.g. `openssl rand -hex 32`)"
            )

    @property
    def enabled(self) -> bool:
        return self._shared is not None or self._public is not None or self._jwks is not None

    def verify(self, token: str) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        if len(token) > 8192:
            raise AuthError("access token too long")
        try:
            header = jwt.get_unverified_header(token)
            key, algorithms = self._key_for(header)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=5,
                options={"require": ["exp", "iat", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid access token: {exc}") from exc
        exp, iat = float(claims["exp"]), float(claims["iat"])
        if exp - iat > self.max_ttl_s:
            raise AuthError(f"access token lives {exp - iat:g} s; at most {self.max_ttl_s:g} s allowed")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise AuthError("invalid access token: sub must be a non-empty string")
        try:
            limits = TokenLimits.model_validate(claims.get("limits") or {})
        except ValidationError as exc:
            raise AuthError("invalid access token: bad limits claim") from exc
        return Identity(subject=subject, limits=limits, expires_at=exp)

    def _key_for(self, header: dict[str, Any]) -> tuple[Any, list[str]]:
        alg = header.get("alg")
        if alg in ALGORITHMS_SHARED and self._shared is not None:
            return self._shared, ALGORITHMS_SHARED
        if alg in ALGORITHMS_PUBLIC:
            if self._jwks is not None and header.get("kid") is not None:
                try:
                    jwk = self._jwks[str(header["kid"])]
                except KeyError as exc:
                    raise jwt.InvalidKeyError(f"unknown key id {header['kid']!r}") from exc
                return jwk.key, ALGORITHMS_PUBLIC
            if self._public is not None:
                return self._public, ALGORITHMS_PUBLIC
        raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} is not accepted here")


def token_from_subprotocols(offered: list[str]) -> str | None:
    """The token in ``Sec-WebSocket-Protocol`` (``token.<jwt>``), if any."""
    for value in offered:
        if value.startswith(TOKEN_PREFIX):
            return value[len(TOKEN_PREFIX) :]
    return None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def startup_refusal(settings: SessionSettings, verifier: TokenVerifier) -> str | None:
    """Why the service must not start (one line), or None: no tokens on a public address needs an opt-out."""
    if verifier.enabled or settings.allow_unauthenticated or is_loopback(settings.host):
        return None
    return (
        f"refusing to serve unauthenticated sessions on {settings.host}: set VOICECHAT_SESSION_AUTH_KEY_FILE "
        "(or AUTH_KEY / AUTH_PUBLIC_KEY_FILE / AUTH_JWKS_FILE), bind 127.0.0.1, or pass --allow-unauthenticated"
    )


def mint_token(
    key: bytes,
    subject: str,
    *,
    ttl_s: float = 300.0,
    audience: str = "voicechat",
    issuer: str | None = None,
    limits: dict[str, int] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 access token, as an application backend mints one per user session."""
    iat = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": subject, "aud": audience, "iat": iat, "exp": iat + int(ttl_s)}
    if issuer is not None:
        claims["iss"] = issuer
    if limits:
        claims["limits"] = limits
    return jwt.encode(claims, key, algorithm="HS256")


def mint_main(argv: list[str] | None = None) -> int:
    """``voicechat-token``: print an HS256 access token (for tests, demos and backend examples)."""
    parser = argparse.ArgumentParser(prog="voicechat-token", description=mint_main.__doc__)
    parser.add_argument("--key-file", type=Path, required=True, help="file holding the HS256 shared key")
    parser.add_argument("--subject", required=True, help="who the session is for (the app's user id)")
    parser.add_argument("--ttl", type=float, default=300.0, help="seconds the token is valid (default 300)")
    parser.add_argument("--audience", default="voicechat")
    parser.add_argument("--issuer", default=None)
    parser.add_argument("--limits", default=None, help="JSON object, e.g. '{\"turns_per_min\": 10}'")
    args = parser.parse_args(argv)
    try:
        key = args.key_file.read_bytes().strip()
        limits = (
            TokenLimits.model_validate_json(args.limits).model_dump(exclude_none=True)
            if args.limits
            else None
        )
    except (OSError, ValidationError) as exc:
        sys.stderr.write(f"voicechat-token: {' '.join(str(exc).split())}\n")
        return 2
    if len(key) < MIN_KEY_BYTES:
        sys.stderr.write(f"voicechat-token: the key needs at least {MIN_KEY_BYTES} bytes\n")
        return 2
    token = mint_token(
        key, args.subject, ttl_s=args.ttl, audience=args.audience, issuer=args.issuer, limits=limits
    )
    sys.stdout.write(token + "\n")
    return 0
