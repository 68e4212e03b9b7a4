"""Access tokens, the Origin allowlist, page security headers, what the public endpoints disclose, and the
service's refusal to run unauthenticated on a public address (issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.session_app import InProcessService, metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session import auth
from voicechat_session.protocol import CloseCode
from voicechat_session.settings import SessionSettings

KEY = "k" * 40


@pytest.fixture
async def secured() -> AsyncIterator[InProcessService]:
    async with session_app(auth_key=KEY) as running:
        yield running


def token(subject: str = "user-1") -> str:
    return auth.mint_token(KEY.encode(), subject)


async def refused(url: str, **options: Any) -> tuple[dict[str, object], int | None]:
    async with VoiceChatClient.connect(url, wait_ready=False, **options) as client:
        error = await client.wait_for("error", timeout_s=10)
        code, _ = await client.wait_closed(timeout_s=10)
        assert not any(isinstance(e, dict) and e["type"] == "ready" for e in client.events)
        return error, code


async def test_token_in_the_subprotocol_opens_a_session(secured: InProcessService) -> None:
    async with VoiceChatClient.connect(
        secured.ws_url, subprotocols=["voicechat", f"token.{token()}"]
    ) as client:
        assert client.ws.subprotocol == "voicechat"
        await client.send({"type": "text", "text": "hi"})
        assert (await client.wait_turn(timeout_s=20)).assistant_final == secured.llm.reply
        (connection,) = secured.registry.sessions.values()
        assert connection.identity.subject == "user-1"  # type: ignore[attr-defined]


async def test_token_as_the_first_message(secured: InProcessService) -> None:
    async with VoiceChatClient.connect(secured.ws_url, wait_ready=False) as client:
        await client.send({"type": "auth", "token": token()})
        ready = await client.wait_for("ready", timeout_s=10)
        assert ready["session_id"]


BAD_TOKENS: dict[str, tuple[Callable[[], str | None], str]] = {
    # Minted when the test runs (a token minted at collection could expire before a long run reaches it).
    "missing": (lambda: None, "no access token"),
    "garbage": (lambda: "not-a-jwt", "invalid access token"),
    "wrong-key": (lambda: auth.mint_token(b"x" * 40, "u"), "invalid access token"),
    "expired": (lambda: auth.mint_token(KEY.encode(), "u", now=time.time() - 600), "expired"),
    "too-long-lived": (lambda: auth.mint_token(KEY.encode(), "u", ttl_s=86_400), "at most 3600 s"),
    "wrong-audience": (lambda: auth.mint_token(KEY.encode(), "u", audience="other"), "Audience"),
    "alg-none": (
        lambda: jwt.encode({"sub": "u", "aud": "voicechat"}, "", algorithm="none"),
        "invalid access token",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_before_ready(case: str) -> None:
    make, why = BAD_TOKENS[case]
    bad = make()
    subprotocols = None if bad is None else ["voicechat", f"token.{bad}"]
    async with session_app(auth_key=KEY, auth_timeout_s=0.5) as service:
        before = metric("voicechat_session_auth_failures_total", reason="token")
        options: dict[str, Any] = {"subprotocols": subprotocols} if subprotocols else {}
        error, code = await refused(service.ws_url, **options)
        assert error["code"] == "unauthorized"
        assert why in str(error["message"])
        assert code == CloseCode.UNAUTHORIZED
        assert metric("voicechat_session_auth_failures_total", reason="token") == before + 1
        assert len(service.registry) == 0


async def test_a_non_auth_first_message_is_refused(secured: InProcessService) -> None:
    async with VoiceChatClient.connect(secured.ws_url, wait_ready=False) as client:
        await client.send({"type": "start", "sample_rate": 16000})
        error = await client.wait_for("error", timeout_s=10)
        assert error["code"] == "unauthorized"


async def test_es256_tokens_from_a_public_key_and_jwks(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]}))
    now = int(time.time())
    claims = {"sub": "es-user", "aud": "voicechat", "iat": now, "exp": now + 60}
    signed = jwt.encode(claims, private, algorithm="ES256", headers={"kid": "k1"})
    verifier = auth.TokenVerifier(SessionSettings(auth_public_key_file=tmp_path / "pub.pem"))
    assert verifier.verify(signed).subject == "es-user"
    by_jwks = auth.TokenVerifier(SessionSettings(auth_jwks_file=tmp_path / "jwks.json"))
    assert by_jwks.verify(signed).subject == "es-user"
    other = jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k1"}
    )
    with pytest.raises(auth.AuthError):
        by_jwks.verify(other)
    # An HS256 token signed with the public key as the secret (the classic confusion) is refused.
    forged = jwt.encode(claims, "x" * 40, algorithm="HS256")
    with pytest.raises(auth.AuthError):
        verifier.verify(forged)


async def test_origin_allowlist() -> None:
    async with session_app(allowed_origins=["https://app.example"]) as service:
        port = service.base_url.rsplit(":", 1)[1]
        for origin in ("https://evil.example", "null", "http://localhost:1"):
            error, code = await refused(service.ws_url, origin=origin)
            assert (error["code"], code) == ("forbidden_origin", CloseCode.UNAUTHORIZED)
        for origin in (f"http://127.0.0.1:{port}", "https://app.example"):
            async with VoiceChatClient.connect(service.ws_url, origin=origin) as client:
                assert client.ready
        async with VoiceChatClient.connect(service.ws_url) as client:  # not a browser: no Origin
            assert client.ready
        assert metric("voicechat_session_auth_failures_total", reason="origin") >= 3


async def test_page_security_headers_and_no_disclosure(secured: InProcessService) -> None:
    page = await secured.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    host = secured.base_url.removeprefix("http://")
    for directive in (
        "default-src 'self'",
        f"connect-src 'self' ws://{host} wss://{host}",
        "worker-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert page.headers["permissions-policy"].startswith("microphone=(self)")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "server" not in page.headers
    info = (await secured.get("/api/info")).json()
    assert info["auth"] == {"required": True, "token_url": None}
    assert secured.settings.llm_url not in str(info)
    assert "pid" not in str(info).lower()
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert (await secured.get(path)).status_code == 404


def test_mint_cli_prints_a_token_the_service_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert auth.mint_main(["--key-file", str(key_file), "--subject", "alice", "--ttl", "60",
                           "--limits", '{"turns_per_min": 3}']) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip()
    identity = auth.TokenVerifier(SessionSettings(auth_key_file=key_file)).verify(printed)
    assert identity.subject == "alice"
    assert identity.limits.turns_per_min == 3
    assert auth.mint_main(["--key-file", str(tmp_path / "missing"), "--subject", "a"]) == 2
    (tmp_path / "short").write_text("tiny")
    assert auth.mint_main(["--key-file", str(tmp_path / "short"), "--subject", "a"]) == 2


@pytest.mark.parametrize(
    ("args", "refused_with"),
    [
        (["--host", "0.0.0.0"], "refusing to serve unauthenticated sessions on 0.0.0.0"),
        (["--host", "10.0.0.5", "--auth-key", "short"], "at least 32 bytes"),
        (["--host", "0.0.0.0", "--auth-key-file", "/nonexistent/key"], "access-token key"),
    ],
)
def test_public_address_without_auth_does_not_start(args: list[str], refused_with: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voicechat_session", *args, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_SESSION_")},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert refused_with in lines[0]


def test_opt_outs_of_the_startup_refusal() -> None:
    verifier = auth.TokenVerifier(SessionSettings())
    assert auth.startup_refusal(SessionSettings(host="0.0.0.0"), verifier) is not None
    for settings in (
        SessionSettings(host="0.0.0.0", allow_unauthenticated=True),
        SessionSettings(host="127.0.0.1"),
    ):
        assert auth.startup_refusal(settings, verifier) is None
    keyed = SessionSettings(host="0.0.0.0", auth_key=KEY)
    assert auth.startup_refusal(keyed, auth.TokenVerifier(keyed)) is None
