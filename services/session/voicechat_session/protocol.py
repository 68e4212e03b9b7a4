"""The WebSocket protocol between a client and the session service (documented in docs/protocol.md).

Text frames carry JSON control messages with a ``type`` field, parsed as discriminated unions; binary
frames carry audio: client → server PCM16 LE mono at the rate announced in ``start``, server → client
PCM16 LE mono at 24 kHz, only between ``audio_start`` and ``audio_end`` of a turn. After ``interrupted`` the
server sends no more audio of that turn.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
OUTPUT_SAMPLE_RATE = 24_000
MIN_INPUT_SAMPLE_RATE = 8_000
MAX_INPUT_SAMPLE_RATE = 48_000


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- client → server
class StartMessage(_Message):
    type: Literal["start"] = "start"
    sample_rate: int = Field(16_000, ge=MIN_INPUT_SAMPLE_RATE, le=MAX_INPUT_SAMPLE_RATE)
    voice: str | None = Field(None, max_length=64)
    speed: float | None = Field(None, ge=0.5, le=2.0)
    resume_token: str | None = Field(
        None,
        description="The latest token this client received: continue that conversation (answered by "
        "`resumed`). Bounded by the frame limit; a token the server cannot use is never fatal.",
    )


class TextMessage(_Message):
    type: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=2000)


class InterruptMessage(_Message):
    type: Literal["interrupt"] = "interrupt"


class ResetMessage(_Message):
    type: Literal["reset"] = "reset"


class ConfigureMessage(_Message):
    """Change voice or speed mid-session; applies from the next clause synthesised."""

    type: Literal["configure"] = "configure"
    voice: str | None = Field(None, max_length=64)
    speed: float | None = Field(None, ge=0.5, le=2.0)


class GetHistoryMessage(_Message):
    """Ask for this session's conversation history (answered with ``history``)."""

    type: Literal["get_history"] = "get_history"


ClientMessage = Annotated[
    StartMessage | TextMessage | InterruptMessage | ResetMessage | ConfigureMessage | GetHistoryMessage,
    Field(discriminator="type"),
]
client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


# --------------------------------------------------------------------------------------- server → client
class ReadyMessage(_Message):
    type: Literal["ready"] = "ready"
    session_id: str
    connect_ms: float = Field(description="WebSocket accepted → this message, measured by the server.")
    protocol_version: int = PROTOCOL_VERSION
    output_sample_rate: int = OUTPUT_SAMPLE_RATE
    voices: list[str] = Field(default_factory=list)
    voice: str
    speed: float
    sharing: Literal["pod", "connection"]
    llm_model: str | None = None
    llm_warm_ttft_ms: float | None = Field(None, description="The shared LLM's warm TTFT from its /warmup.")
    resume_token: str | None = Field(None, description="Token of this (new, empty) conversation.")


class StartedMessage(_Message):
    """Acknowledges ``start`` (and ``configure``): the effective audio and voice settings."""

    type: Literal["started"] = "started"
    sample_rate: int
    voice: str
    speed: float


class VadMessage(_Message):
    type: Literal["vad"] = "vad"
    speaking: bool


class TranscriptMessage(_Message):
    type: Literal["transcript"] = "transcript"
    text: str
    final: bool
    turn_id: int


class AssistantMessage(_Message):
    type: Literal["assistant"] = "assistant"
    text: str = Field(description="Delta; with final=true, the whole reply as spoken.")
    final: bool
    turn_id: int


class AudioStartMessage(_Message):
    type: Literal["audio_start"] = "audio_start"
    turn_id: int
    sample_rate: int = OUTPUT_SAMPLE_RATE


class AudioEndMessage(_Message):
    type: Literal["audio_end"] = "audio_end"
    turn_id: int


InterruptReason = Literal["barge_in", "client", "superseded", "reset", "shutdown"]


class InterruptedMessage(_Message):
    """The assistant's turn stopped early: flush playback; no more audio of this turn follows."""

    type: Literal["interrupted"] = "interrupted"
    turn_id: int
    reason: InterruptReason = "client"


class HistoryClearedMessage(_Message):
    type: Literal["history_cleared"] = "history_cleared"


class HistoryEntry(_Message):
    role: Literal["system", "user", "assistant"]
    content: str


class HistoryMessage(_Message):
    """The conversation as the LLM will see it next turn (budget applied), without the system prompt."""

    type: Literal["history"] = "history"
    messages: list[HistoryEntry]


ResumeFailureCode = Literal["expired", "invalid", "foreign_key", "oversized", "malformed"]
"""Why a resume token was not used (also the ``outcome`` of ``voicechat_session_resumes_total``)."""


class ResumedMessage(_Message):
    """Answer to a ``start`` carrying a resume token, before ``started``.

    ``resumed=true``: the conversation continues (``session_id``, voice, speed and ``messages`` restored).
    ``resumed=false``: a fresh, empty session; ``error`` and ``message`` say why (never fatal).
    """

    type: Literal["resumed"] = "resumed"
    resumed: bool
    session_id: str
    error: ResumeFailureCode | None = None
    message: str | None = None
    messages: list[HistoryEntry] = Field(
        default_factory=list, description="The restored conversation (user and assistant), oldest first."
    )
    age_s: float | None = Field(None, description="Age of the token used.")


class ResumeTokenMessage(_Message):
    """The conversation's latest state, sealed: keep the newest, send it in ``start`` when reconnecting.

    Sent after every finished turn (after its ``turn_metrics``), after ``reset``, ``configure`` and
    ``resumed``, and before a "going away" close."""

    type: Literal["resume_token"] = "resume_token"
    token: str
    expires_in_s: float


ErrorCode = Literal[
    "bad_json",
    "unknown_type",
    "invalid_message",
    "not_started",
    "already_started",
    "odd_length_audio",
    "frame_too_large",
    "audio_too_fast",
    "unknown_voice",
    "llm_unavailable",
    "llm_timeout",
    "llm_error",
    "llm_throttled",
    "stt_failed",
    "tts_failed",
    "server_full",
    "not_ready",
    "idle_timeout",
    "session_expired",
    "shutting_down",
    "internal",
    "unauthorized",
    "forbidden_origin",
    "rate_limited",
    "too_many_sessions",
]


class ErrorMessage(_Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    fatal: bool = Field(False, description="True when the server closes the connection after this message.")


class TurnMetricsMessage(_Message):
    """Per-turn latency breakdown in milliseconds (None where the stage did not run)."""

    type: Literal["turn_metrics"] = "turn_metrics"
    turn_id: int
    source: Literal["voice", "text"]
    endpointing_ms: float | None = None
    speculation: Literal["hit", "miss", "none"] | None = None
    speculation_head_start_ms: float | None = None
    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    llm_first_phrase_ms: float | None = None
    tts_first_chunk_ms: float | None = None
    time_to_first_audio_ms: float | None = None
    turn_ms: float | None = None
    audio_ms: float | None = None
    playback_stalls: int = 0
    """Times the reply's audio ran dry after it began (the client heard a gap), gaps of 20 ms or more."""
    playback_stall_ms: float = 0.0
    """Those gaps, summed."""
    interrupted: bool = False


ServerMessage = Annotated[
    ReadyMessage
    | StartedMessage
    | VadMessage
    | TranscriptMessage
    | AssistantMessage
    | AudioStartMessage
    | AudioEndMessage
    | InterruptedMessage
    | HistoryClearedMessage
    | HistoryMessage
    | ResumedMessage
    | ResumeTokenMessage
    | ErrorMessage
    | TurnMetricsMessage,
    Field(discriminator="type"),
]
server_message_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


class CloseCode:
    """WebSocket close codes the server uses (RFC 6455 where one fits, 4xxx for application reasons)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # draining on SIGTERM
    POLICY_VIOLATION = 1008  # audio far faster than real time, repeated protocol abuse
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # pod at max_sessions
    IDLE_TIMEOUT = 4000
    SESSION_EXPIRED = 4001
    UNAUTHORIZED = 4003  # no, bad or expired access token; or a foreign Origin


class AuthMessage(_Message):
    """The access token, as the first message, when the client cannot put it in the WebSocket subprotocol
    (``voicechat, token.<jwt>``). Only accepted before ``ready``; see :mod:`voicechat_session.auth`."""

    type: Literal["auth"] = "auth"
    token: str = Field(min_length=1, max_length=8192)


def describe_validation_error(exc: ValidationError) -> tuple[ErrorCode, str]:
    """Map a pydantic failure on a client message to the protocol's error code and a readable message."""
    first = exc.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return "bad_json", f"not valid JSON: {first['msg']}"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx") or {}
        return (
            "unknown_type",
            f"unknown message type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}",
        )
    if kind in ("union_tag_not_found", "model_attributes_type", "model_type"):
        return "invalid_message", "a control message is a JSON object with a string 'type' field"
    where = ".".join(str(p) for p in first["loc"][1:]) or "message"
    return "invalid_message", f"{where}: {first['msg']}"
