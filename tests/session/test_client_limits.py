"""Per-client limits (issue 13): sessions per client IP and per token subject, connections per IP per minute,
the trusted proxy header, and the metrics port kept off the public one."""

from __future__ import annotations

import httpx

from tests.support.inprocess import bind_ephemeral
from tests.support.session_app import metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session import auth
from voicechat_session.protocol import CloseCode

KEY = "q" * 40


async def _refusal(url: str, **options: object) -> tuple[object, int | None]:
    async with VoiceChatClient.connect(url, wait_ready=False, **options) as client:  # type: ignore[arg-type]
        error = await client.wait_for("error", timeout_s=10)
        code, _ = await client.wait_closed(timeout_s=10)
        return error["code"], code


async def test_sessions_per_ip_and_connection_rate() -> None:
    async with session_app(
        limit_exempt_ips=[], max_sessions_per_ip=2, max_connects_per_ip_per_min=3
    ) as service:
        before = metric("voicechat_session_limits_hit_total", limit="too_many_sessions")
        async with VoiceChatClient.connect(service.ws_url), VoiceChatClient.connect(service.ws_url):
            assert await _refusal(service.ws_url) == ("too_many_sessions", CloseCode.TRY_AGAIN_LATER)
        assert metric("voicechat_session_limits_hit_total", limit="too_many_sessions") == before + 1
        # Three connections this minute so far (the refused one counts): the fourth is over the rate.
        assert await _refusal(service.ws_url) == ("rate_limited", CloseCode.TRY_AGAIN_LATER)
        assert len(service.registry) == 0


async def test_loopback_is_exempt_by_default() -> None:
    async with (
        session_app(max_sessions_per_ip=1) as service,
        VoiceChatClient.connect(service.ws_url),
        VoiceChatClient.connect(service.ws_url) as second,
    ):
        assert second.ready


async def test_trusted_proxy_header_names_the_client() -> None:
    async with session_app(
        limit_exempt_ips=[], max_sessions_per_ip=1, trusted_proxy_header="x-forwarded-for"
    ) as service:
        alice = {"additional_headers": {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}}
        bob = {"additional_headers": {"X-Forwarded-For": "198.51.100.9"}}
        async with VoiceChatClient.connect(service.ws_url, **alice):  # type: ignore[arg-type]
            async with VoiceChatClient.connect(service.ws_url, **bob) as other:  # type: ignore[arg-type]
                assert other.ready
            assert (await _refusal(service.ws_url, **alice))[0] == "too_many_sessions"


async def test_sessions_per_subject_and_token_limits() -> None:
    async with session_app(auth_key=KEY, max_sessions_per_subject=3) as service:
        tight = auth.mint_token(KEY.encode(), "bob", limits={"max_sessions": 1, "turns_per_min": 1})
        options = {"subprotocols": ["voicechat", f"token.{tight}"]}
        async with VoiceChatClient.connect(service.ws_url, **options) as client:  # type: ignore[arg-type]
            assert (await _refusal(service.ws_url, **options))[0] == "too_many_sessions"
            await client.send({"type": "text", "text": "one"})
            await client.wait_turn(timeout_s=20)
            await client.send({"type": "text", "text": "two"})
            assert (await client.wait_for("error", timeout_s=10))["code"] == "rate_limited"
        # Released on close: bob may connect again.
        async with VoiceChatClient.connect(service.ws_url, **options) as again:  # type: ignore[arg-type]
            assert again.ready


async def test_metrics_on_the_internal_port_only() -> None:
    sock = bind_ephemeral()
    port = sock.getsockname()[1]
    sock.close()
    async with session_app(internal_port=port) as service:
        assert (await service.get("/metrics")).status_code == 404
        async with httpx.AsyncClient(timeout=10) as http:
            internal = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert internal.status_code == 200
        assert "voicechat_session_active_sessions" in internal.text
