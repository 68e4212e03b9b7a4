"""A local Amazon Bedrock Runtime: ``POST /model/{modelId}/converse-stream`` on the real wire format.

The reply is ``application/vnd.amazon.eventstream``: binary AWS event-stream messages (prelude with total
length, headers length and prelude CRC32; ``:event-type``/``:content-type``/``:message-type`` headers; a JSON
payload; message CRC32), carrying ``messageStart``, ``contentBlockDelta`` (one per word),
``contentBlockStop``, ``messageStop`` and ``metadata`` as Bedrock sends them, so boto3's own event-stream
parser (which checks both CRCs) reads it. Errors are shaped like AWS's too: an HTTP error with the
``x-amzn-ErrorType`` header and a ``{"message": ...}`` body, or an exception *event* mid-stream
(``:message-type: exception``, ``:exception-type: modelStreamErrorException``...).

The SigV4 ``Authorization`` header's credential scope must name the stand-in's region and the ``bedrock``
service (403 ``InvalidSignatureException`` otherwise, as AWS answers a client configured for the wrong
region). The signature itself is not verified: any credentials do. Only the standard library is used, so the
stand-in can be imported where boto3 is not installed.

It runs in its own thread (a plain context manager, usable from sync and async tests alike)::

    with BedrockStandIn(region="eu-west-1", replies=["Hello there.", Reply(throttle=True)]) as bedrock:
        client = boto3.client("bedrock-runtime", endpoint_url=bedrock.url, region_name="eu-west-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        ...
        bedrock.last_request          # parsed JSON body: messages / system / inferenceConfig
        bedrock.model_ids[-1]         # the model id from the URL path
        bedrock.stream_cut.wait(5)    # a stream the client closed before its end
        bedrock.connections           # TCP connections accepted (pooled clients reuse one)

Arguments: ``region`` (default ``us-east-1``); ``replies``: scripted replies used in order, each a ``str`` or
a :class:`Reply` (after the list is used up, ``reply`` answers every request); ``models``: the model ids
that exist (None: any id); ``host``/``port`` to bind (default 127.0.0.1, ephemeral port). ``replies`` may be
appended to while serving (e.g. after a service's start-up request).
A request whose ``inferenceConfig.maxTokens`` is smaller than the reply gets that many words and
``stopReason: max_tokens``.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

SERVICE = "bedrock"
_PATH = re.compile(r"^/model/(?P<model>[^/]+)/converse-stream$")
_SCOPE = re.compile(
    r"Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)/"
)


@dataclass
class Reply:
    """One scripted answer."""

    text: str = "Hello there. It is nice to talk to you."
    stop_reason: str = "end_turn"
    first_event_delay_s: float = 0.0
    """Before ``messageStart`` (time to first token); a closed connection is noticed while waiting."""
    token_delay_s: float = 0.005
    throttle: bool = False
    """Answer HTTP 429 ``ThrottlingException`` instead of streaming."""
    exception: str | None = None
    """An exception event sent after ``exception_after_tokens`` deltas, e.g. ``modelStreamErrorException``,
    ``throttlingException``, ``internalServerException``, ``serviceUnavailableException``."""
    exception_after_tokens: int = 2
    exception_message: str = "The model stopped unexpectedly."


@dataclass
class _State:
    requests: list[dict[str, Any]] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    connections: int = 0


class BedrockStandIn:
    """See the module docstring."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        replies: Iterable[str | Reply] = (),
        reply: str | Reply = "Hello there. It is nice to talk to you.",
        models: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.region = region
        self.replies: list[Reply] = [_as_reply(r) for r in replies]
        self.reply = _as_reply(reply)
        self.models = None if models is None else set(models)
        self._state = _State()
        self._lock = threading.Lock()
        self.stream_cut = threading.Event()
        """Set when a client closes a stream before its last event (a barge-in that really cancelled)."""
        self._server = _Server((host, port), self._handler_class(), self._count_connection)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- what tests read -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every accepted request's parsed JSON body, oldest first (throttled ones included)."""
        with self._lock:
            return list(self._state.requests)

    @property
    def last_request(self) -> dict[str, Any]:
        with self._lock:
            if not self._state.requests:
                raise AssertionError("the Bedrock stand-in has not received a request")
            return self._state.requests[-1]

    @property
    def model_ids(self) -> list[str]:
        with self._lock:
            return list(self._state.model_ids)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._state.headers)

    @property
    def completed(self) -> int:
        """Streams sent to their end."""
        with self._lock:
            return self._state.completed

    @property
    def cancelled(self) -> int:
        """Streams the client closed before their end."""
        with self._lock:
            return self._state.cancelled

    @property
    def connections(self) -> int:
        """TCP connections accepted: a client that reuses its pooled connection opens one for many replies."""
        with self._lock:
            return self._state.connections

    def _count_connection(self) -> None:
        with self._lock:
            self._state.connections += 1

    @property
    def rejected(self) -> int:
        """Requests refused before streaming (bad signature scope, unknown model, throttled, bad body)."""
        with self._lock:
            return self._state.rejected

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> BedrockStandIn:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bedrock-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BedrockStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- serving ---------------------------------------------------------------------------------------

    def _next_reply(self) -> Reply:
        with self._lock:
            return self.replies.pop(0) if self.replies else self.reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def do_POST(self) -> None:
                standin._handle(self)

            def do_GET(self) -> None:
                self.close_connection = True
                _send_error(self, 404, "UnknownOperationException", "Unknown operation")

        return Handler

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(h.path).path
        match = _PATH.match(path)
        if match is None:
            return self._reject(h, 404, "UnknownOperationException", "Unknown operation")
        if (problem := self._check_scope(h.headers.get("Authorization"))) is not None:
            return self._reject(h, 403, *problem)
        model_id = urllib.parse.unquote(match["model"])
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return self._reject(h, 400, "SerializationException", "Unable to parse the request body.")
        with self._lock:
            self._state.requests.append(body)
            self._state.model_ids.append(model_id)
            self._state.headers.append(dict(h.headers.items()))
        if self.models is not None and model_id not in self.models:
            return self._reject(h, 400, "ValidationException", "The provided model identifier is invalid.")
        if (invalid := _check_messages(body)) is not None:
            return self._reject(h, 400, "ValidationException", invalid)
        reply = self._next_reply()
        if reply.throttle:
            return self._reject(
                h, 429, "ThrottlingException", "Too many requests, please wait before trying again."
            )
        max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
        self._stream(h, body, reply, max_tokens if isinstance(max_tokens, int) else None)

    def _check_scope(self, authorization: str | None) -> tuple[str, str] | None:
        if not authorization:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        scope = _SCOPE.search(authorization)
        if not authorization.startswith("AWS4-HMAC-SHA256 ") or scope is None:
            return "IncompleteSignatureException", "Authorization header requires a valid SigV4 Credential."
        if scope["service"] != SERVICE:
            return (
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SERVICE}'. ",
            )
        if scope["region"] != self.region:
            return "InvalidSignatureException", "Credential should be scoped to a valid region. "
        return None

    def _reject(self, h: BaseHTTPRequestHandler, status: int, error_type: str, message: str) -> None:
        with self._lock:
            self._state.rejected += 1
        _send_error(h, status, error_type, message)

    def _stream(
        self, h: BaseHTTPRequestHandler, body: dict[str, Any], reply: Reply, max_tokens: int | None
    ) -> None:
        words = reply.text.split(" ")
        stop_reason = reply.stop_reason
        if max_tokens is not None and max_tokens < len(words):
            words, stop_reason = words[:max_tokens], "max_tokens"
        started = time.monotonic()
        h.send_response(200)
        h.send_header("Content-Type", "application/vnd.amazon.eventstream")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("x-amzn-RequestId", "00000000-0000-4000-8000-000000000000")
        h.end_headers()
        h.wfile.flush()
        conn = h.connection
        finished = False
        try:
            if _client_gone(conn, reply.first_event_delay_s):
                return
            _write_chunk(h, event("messageStart", {"role": "assistant"}))
            for index, word in enumerate(words):
                if reply.exception is not None and index == reply.exception_after_tokens:
                    _write_chunk(h, exception_event(reply.exception, reply.exception_message))
                    finished = True
                    return
                token = word if index == len(words) - 1 else word + " "
                _write_chunk(
                    h, event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": token}})
                )
                if _client_gone(conn, reply.token_delay_s):
                    return
            if reply.exception is not None:
                _write_chunk(h, exception_event(reply.exception, reply.exception_message))
                finished = True
                return
            _write_chunk(h, event("contentBlockStop", {"contentBlockIndex": 0}))
            _write_chunk(h, event("messageStop", {"stopReason": stop_reason}))
            input_tokens = sum(len(json.dumps(m).split()) for m in body.get("messages") or [])
            _write_chunk(
                h,
                event(
                    "metadata",
                    {
                        "usage": {
                            "inputTokens": input_tokens,
                            "outputTokens": len(words),
                            "totalTokens": input_tokens + len(words),
                        },
                        "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
                    },
                ),
            )
            finished = True
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if finished:
                try:
                    h.wfile.write(b"0\r\n\r\n")
                    h.wfile.flush()
                except OSError:
                    finished = False
            h.close_connection = not finished
            with self._lock:
                if finished:
                    self._state.completed += 1
                else:
                    self._state.cancelled += 1
            if not finished:
                self.stream_cut.set()


class _Server(ThreadingHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        on_connection: Callable[[], None],
    ) -> None:
        super().__init__(address, handler)
        self._on_connection = on_connection

    def process_request(self, request: Any, client_address: Any) -> None:
        self._on_connection()
        super().process_request(request, client_address)


# --- the AWS event-stream encoding (also used by tests to build frames) ----------------------------------


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32), headers, payload, CRC32.

    Header values are all strings (type 7: a 2-byte big-endian length, then UTF-8), as Bedrock sends them.
    """
    encoded_headers = b""
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded_headers += struct.pack("!B", len(name_bytes)) + name_bytes
        encoded_headers += struct.pack("!BH", 7, len(value_bytes)) + value_bytes
    total = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded_headers))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + encoded_headers + payload
    return message + struct.pack("!I", zlib.crc32(message))


def event(event_type: str, body: dict[str, Any]) -> bytes:
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(body, separators=(",", ":")).encode(),
    )


def exception_event(exception_type: str, message: str) -> bytes:
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )


def _check_messages(body: dict[str, Any]) -> str | None:
    """The Converse API's own checks on ``messages``: non-empty, starting with user, alternating roles."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "The model returned the following errors: messages: at least one message is required"
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if roles[0] != "user":
        return (
            "A conversation must start with a user message. "
            "Try again with a conversation that starts with a user message."
        )
    for previous, current in itertools.pairwise(roles):
        if current not in ("user", "assistant"):
            return f"Invalid role: {current!r}"
        if current == previous:
            return (
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list) or not content or not all(isinstance(c, dict) for c in content):
            return "The content field in the Message object is empty or malformed."
    return None


def _send_error(h: BaseHTTPRequestHandler, status: int, error_type: str, message: str) -> None:
    payload = json.dumps({"message": message}).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/")
    h.send_header("x-amzn-RequestId", "00000000-0000-4000-8000-000000000000")
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    h.wfile.write(payload)
    h.wfile.flush()


def _write_chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
    h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    h.wfile.flush()


def _client_gone(conn: socket.socket, wait_s: float) -> bool:
    """Wait up to ``wait_s``; True as soon as the client closes the connection (it sends nothing else)."""
    deadline = time.monotonic() + wait_s
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([conn], [], [], remaining)
        if readable:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    return True
            except OSError:
                return True
            # Unexpected bytes from the client: not a close; keep waiting without spinning on them.
            time.sleep(min(remaining, 0.01))
        if time.monotonic() >= deadline:
            return False


def _as_reply(reply: str | Reply) -> Reply:
    return reply if isinstance(reply, Reply) else Reply(text=reply)
