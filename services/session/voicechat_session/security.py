"""HTTP-level protections: the Origin allowlist for ``/ws``, the page's security headers, the client's IP.

The page is CSP-clean (ES modules, no inline code or styles): the policy below is the one the browser test's
strict server uses, so the page keeps working under it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'{ws}; img-src 'self'; style-src 'self'; script-src 'self'; "
    "worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
)
"""The policy of tests/browser/test_page.py's strict server; ``{ws}`` becomes the request's own host as
ws:// and wss:// (CSP 3 lets ``'self'`` match them, older Safari does not)."""

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-:[]")


def content_security_policy(host: str | None) -> str:
    host = (host or "").lower()
    if not host or not set(host) <= _HOST_CHARS:  # never reflect an odd Host header into a header
        return CONTENT_SECURITY_POLICY.format(ws="")
    return CONTENT_SECURITY_POLICY.format(ws=f" ws://{host} wss://{host}")


SECURITY_HEADERS: dict[str, str] = {
    "permissions-policy": "microphone=(self), camera=(), geolocation=(), payment=()",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` and the CSP to every HTTP response (not to WebSocket handshakes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._raw = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self._raw_keys = {k for k, _ in self._raw}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        csp = content_security_policy(Headers(scope=scope).get("host")).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self._raw_keys]
                message["headers"] = [*headers, *self._raw, (b"content-security-policy", csp)]
            await send(message)

        await self.app(scope, receive, with_headers)


def origin_allowed(headers: Headers, scheme: str, allowed: list[str]) -> bool:
    """Same-origin (the ``Host`` the client connected to) or listed. No ``Origin`` header: not a browser (a
    native client or the load test), which a web page cannot pretend to be; such clients need a token when
    auth is on. ``Origin: null`` (sandboxed frames, file://) is refused unless listed."""
    origin = headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed or origin in {a.lower().rstrip("/") for a in allowed}:
        return True
    host = headers.get("host", "").lower()
    http_scheme = "https" if scheme in ("wss", "https") else "http"
    return bool(host) and origin == f"{http_scheme}://{host}"


def client_ip(scope: Scope, trusted_header: str | None) -> str:
    """The client's IP: the peer address, or the left-most entry of ``trusted_header`` when configured (only
    behind a proxy that sets it; otherwise any client could claim any address)."""
    if trusted_header:
        value = Headers(scope=scope).get(trusted_header)
        if value:
            first = value.split(",")[0].strip()
            if first:
                return first[:64]
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"


TRANSPORT_SCOPE_KEY = "voicechat.transport"


class TransportMiddleware:
    """Puts the connection's asyncio transport in WebSocket scopes (``scope["voicechat.transport"]``), so a
    session whose client stopped reading can be aborted: a close frame would only queue behind the unread
    data, and ``transport.close()`` waits for it to drain. Must sit where ``send`` is still the server's own
    (uvicorn's protocol method): inside ServerErrorMiddleware, which passes WebSocket scopes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[TRANSPORT_SCOPE_KEY] = transport
        await self.app(scope, receive, send)


def abort_transport(scope: Scope) -> bool:
    """Drop the connection now (no close handshake, unsent data discarded). False when not possible."""
    transport = scope.get(TRANSPORT_SCOPE_KEY)
    abort = getattr(transport, "abort", None)
    if abort is None:
        return False
    abort()
    return True
