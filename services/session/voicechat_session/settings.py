"""Configuration of the session service: environment variables ``VOICECHAT_SESSION_*`` and CLI flags.

This class is the single source of truth for the names: the operator renders pod environments from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicechat_common.contracts import DEFAULT_SYSTEM_PROMPT
from voicechat_session.resume_size import budget_plaintext_bytes, max_plaintext_bytes

ENV_PREFIX = "VOICECHAT_SESSION_"
PORT = 8080
# /metrics on Kubernetes: a port the session Service does not expose, reachable only by Prometheus.
METRICS_PORT = 9090
# Model names an OpenAI-compatible speech server is asked for when stt_model / tts_model are unset (OpenAI's
# own names; Kokoro-FastAPI and most look-alikes accept them as aliases).
REMOTE_STT_MODEL = "whisper-1"
REMOTE_TTS_MODEL = "tts-1"


class SessionSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        cli_prog_name="voicechat-session",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    host: str = Field("0.0.0.0", description="Bind address.")
    port: int = Field(PORT, ge=1, le=65535, description="HTTP + WebSocket port.")

    # LLM: any OpenAI-compatible /v1/chat/completions (`openai`), or Amazon Bedrock ConverseStream (`bedrock`).
    llm_provider: Literal["openai", "bedrock"] = Field(
        "openai",
        description="Chat model API: `openai` (llm_url: the LLM service, vLLM, llama.cpp, Ollama, OpenAI, a "
        "gateway) or `bedrock` (Bedrock Runtime ConverseStream; llm_model is the model id).",
    )
    bedrock_region: str | None = Field(
        None, description="AWS region of Bedrock (default: the SDK's, e.g. AWS_REGION from the pod identity)."
    )
    bedrock_endpoint_url: str | None = Field(
        None, description="Bedrock Runtime endpoint override (a VPC endpoint, or a local stand-in in tests)."
    )
    llm_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL (…/v1).")
    llm_api_key: SecretStr | None = Field(None, description="Bearer token for the LLM API, if it needs one.")
    llm_model: str | None = Field(
        None, description="Model name to request (default: first of GET /v1/models)."
    )
    llm_warmup_url: str | None = Field(
        None,
        description="The LLM service's /warmup report (shared warm inference time), shown when reachable.",
    )
    llm_temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    llm_max_tokens: int = Field(200, ge=1, le=4096, description="Maximum tokens per reply.")
    llm_first_token_timeout_s: float = Field(
        15.0, gt=0, description="No first token by then → llm_timeout error."
    )
    llm_stream_timeout_s: float = Field(60.0, gt=0, description="Whole reply deadline.")
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT,
        description="System prompt kept at the head of every conversation.",
    )
    system_prompt_file: Path | None = Field(None, description="File holding the system prompt (overrides).")
    history_max_messages: int = Field(
        24, ge=2, description="History budget in messages (oldest dropped first)."
    )
    history_max_chars: int = Field(8000, ge=200, description="History budget in characters.")

    # Models: weights loaded once per pod (`pod`) or per connection (`connection`, the slow "before").
    sharing: Literal["pod", "connection"] = Field("pod", description="Where model weights live.")
    workers: int = Field(
        0, ge=0, description="Model calls at once in the pod's pool (0 = one per 2 CPU cores, at least 1)."
    )
    model_threads: int = Field(
        0,
        ge=0,
        description="Compute threads per STT/TTS call (0 = CPU cores / workers): workers x threads never exceeds "
        "the cores, so a first phrase is not slowed by oversubscription.",
    )
    stt_backend: Literal["faster-whisper", "remote", "fake"] = Field(
        "faster-whisper",
        description="STT implementation (`remote`: an OpenAI-compatible /v1/audio/transcriptions server; "
        "`fake`: scripted transcripts, no weights).",
    )
    stt_url: str | None = Field(None, description="remote STT: base URL (…/v1) of the speech server.")
    stt_api_key: SecretStr | None = Field(None, description="remote STT: bearer token, if it needs one.")
    stt_model: str | None = Field(
        None,
        description="faster-whisper model directory or name (default: embedded Whisper tiny.en); remote STT: "
        f"the model to request (default {REMOTE_STT_MODEL}).",
    )
    stt_device: str = Field("cpu", description="cpu | cuda | auto.")
    stt_compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float16, …).")
    stt_threads: int = Field(0, ge=0, description="CPU threads per transcription (0 = default).")
    stt_language: str | None = Field("en", description="Language code, or empty for auto-detection.")
    stt_beam_size: int = Field(1, ge=1, le=10)
    vad_backend: Literal["silero", "energy"] = Field(
        "silero", description="VAD implementation (`energy`: signal level, no weights)."
    )
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero speech probability threshold.")
    vad_min_silence_ms: int = Field(500, ge=100, le=5000, description="Silence that ends the user's turn.")
    vad_min_speech_ms: int = Field(200, ge=50, le=5000, description="Shorter speech bursts are ignored.")
    barge_in_min_speech_ms: int = Field(300, ge=50, description="User speech that interrupts the assistant.")
    max_utterance_s: float = Field(
        30.0, gt=1, le=120, description="An utterance is cut and transcribed here."
    )
    partial_transcripts: bool = Field(True, description="Send partial transcripts while the user speaks.")
    speculate_silence_ms: int = Field(
        200,
        ge=0,
        le=5000,
        description="Silence after which the final transcription and the reply start before the end of turn is "
        "decided (held until then, discarded if the user speaks again); 0 = off; at least vad_min_silence_ms = off.",
    )
    speculate_max_waiting: int = Field(
        1,
        ge=0,
        description="No speculative reply starts while more model calls than this wait in the pod's pool "
        "(the pod is saturated: speculation would only delay others' committed turns).",
    )
    tts_backend: Literal["kokoro-onnx", "kokoro", "remote", "fake"] = Field(
        "kokoro-onnx",
        description="TTS implementation (`remote`: an OpenAI-compatible /v1/audio/speech server such as "
        "Kokoro-FastAPI, Orpheus or Coqui XTTS servers; `fake`: a tone as long as the text, no weights).",
    )
    tts_url: str | None = Field(None, description="remote TTS: base URL (…/v1) of the speech server.")
    tts_api_key: SecretStr | None = Field(None, description="remote TTS: bearer token, if it needs one.")
    tts_model: str | None = Field(
        None, description=f"remote TTS: model name to request (e.g. kokoro; default {REMOTE_TTS_MODEL})."
    )
    speech_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="remote STT/TTS: connect timeout, and longest wait for the next bytes of an answer.",
    )
    tts_model_path: Path | None = Field(None, description="Kokoro ONNX model (default: embedded int8 model).")
    tts_conv: Literal["auto", "int8", "gemm", "float"] = Field(
        "auto",
        description="kokoro-onnx: run the quantized model's convolutions as ONNX Runtime's ConvInteger (`int8`), "
        "as im2col + MatMulInteger (`gemm`, exact, uses VNNI/AMX where the CPU has them) or as float Conv "
        "(`float`); `auto` times them once per machine and keeps the fastest (ConvInteger is several times "
        "slower than the others on some CPUs).",
    )
    tts_voices_path: Path | None = Field(
        None, description="Kokoro voices .npz/.bin (default: embedded voices)."
    )
    tts_voice: str = Field("jf_alpha", description="Default voice.")
    tts_speed: float = Field(1.0, ge=0.5, le=2.0, description="Default speaking rate.")
    tts_lang: str = Field("en-us", description="Kokoro G2P language.")
    output_chunk_ms: int = Field(80, ge=10, le=500, description="Duration of one binary audio frame sent.")
    output_lead_ms: int = Field(
        1500,
        ge=0,
        le=60_000,
        description="Audio sent ahead of real time; the rest is paced so a barge-in cuts what is unheard.",
    )
    # Fake backends (tests, demos without weights): deterministic output after a fixed latency.
    fake_stt_transcripts: list[str] = Field(
        ["hello there"],
        description="fake STT: transcripts returned in turn, cycling ('<error>' raises; quiet audio → '').",
    )
    fake_stt_latency_ms: float = Field(0.0, ge=0, description="fake STT: time per transcription.")
    fake_tts_latency_ms: float = Field(0.0, ge=0, description="fake TTS: time per clause.")
    fake_tts_ms_per_char: float = Field(
        60.0, gt=0, description="fake TTS: audio length per character of text, at speed 1."
    )
    vad_energy_threshold: float = Field(
        0.02, gt=0, lt=1, description="energy VAD: RMS level of a window that counts as speech."
    )
    tts_device: Literal["cpu", "cuda"] = Field("cpu", description="ONNX execution provider / torch device.")
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "voicechat", description="Where assembled model files are written."
    )

    # Limits
    max_sessions: int = Field(8, ge=1, description="Open sessions per pod; the next one is refused.")
    max_frame_bytes: int = Field(64_000, ge=1024, description="Largest WebSocket message accepted.")
    max_audio_rate_factor: float = Field(
        3.0, ge=1.0, description="Audio faster than this x real time is refused."
    )
    idle_timeout_s: float = Field(300.0, gt=0, description="Close a session idle this long.")
    max_session_s: float = Field(3600.0, gt=0, description="Close a session this old.")
    drain_grace_s: float = Field(20.0, ge=0, description="SIGTERM: time open sessions get to finish a turn.")

    max_output_bytes: int = Field(
        4_000_000,
        ge=65_536,
        description="Bytes queued for one client (audio + messages); more means it stopped reading: closed.",
    )
    send_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A single send blocked this long (client not reading): the transport is aborted.",
    )
    handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        description="HTTP keep-alive / request-head timeout, so half-open connections are dropped.",
    )

    # Security: access tokens (JWT), origins, per-client limits (README "Security model").
    auth_key: SecretStr | None = Field(None, description="HS256 shared key for access tokens.")
    auth_key_file: Path | None = Field(None, description="File holding the HS256 shared key (e.g. a Secret).")
    auth_public_key_file: Path | None = Field(
        None, description="PEM public key for RS256/ES256 access tokens (minted elsewhere)."
    )
    auth_jwks_file: Path | None = Field(None, description="JWKS file of public keys (tokens carry `kid`).")
    auth_audience: str = Field("voicechat", description="Required `aud` claim of access tokens.")
    auth_issuer: str | None = Field(None, description="Required `iss` claim, when set.")
    auth_max_ttl_s: float = Field(
        3600.0, gt=0, description="Tokens living longer than this (exp - iat) are refused: short-lived only."
    )
    auth_timeout_s: float = Field(5.0, gt=0, description="Time a client has to send its `auth` message.")
    auth_token_url: str | None = Field(
        None,
        description="Same-origin endpoint of the app's backend that the page asks for a token (GET, JSON).",
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve without access tokens on a non-loopback address (explicit opt-out)."
    )
    allowed_origins: list[str] = Field(
        [],
        description="Origins allowed to open /ws besides the service's own (`*` allows any); no Origin is "
        "accepted (not a browser).",
    )
    trusted_proxy_header: str | None = Field(
        None, description="Header holding the client IP (e.g. x-forwarded-for), only behind a trusted proxy."
    )
    limit_exempt_ips: list[str] = Field(
        ["127.0.0.1", "::1"],
        description="Client IPs the per-IP limits do not apply to (the local stack, the bench on this host).",
    )
    max_sessions_per_subject: int = Field(4, ge=1, description="Open sessions per token subject, per pod.")
    max_sessions_per_ip: int = Field(4, ge=1, description="Open sessions per client IP, per pod.")
    max_connects_per_ip_per_min: int = Field(
        60, ge=1, description="New connections per client IP per minute."
    )
    max_turns_per_min: int = Field(30, ge=1, description="Turns per session per minute.")
    max_llm_tokens_per_min: int = Field(
        4000, ge=1, description="LLM tokens (max_tokens reserved per turn) per session per minute."
    )
    max_errors_per_s: int = Field(
        5, ge=1, description="Error events per second sent to a client; beyond, counted silently."
    )
    max_errors_per_min: int = Field(
        600, ge=1, description="Client errors per minute before the session is closed 1008."
    )
    internal_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port for /metrics (cluster-internal); unset: /metrics on the main port (local stack).",
    )

    # Resume tokens (resume.py): conversation state sealed with a key every session pod shares.
    resume_key: SecretStr | None = Field(
        None,
        description="Key sealing resume tokens (32+ random characters). None and no key file: a key of "
        "this process only, so conversations resume only on it.",
    )
    resume_key_file: Path | None = Field(
        None, description="File holding the key (a mounted Secret); overrides resume_key."
    )
    resume_previous_key: SecretStr | None = Field(
        None, description="The key before a rotation: its tokens still open, new ones use the current key."
    )
    resume_previous_key_file: Path | None = Field(
        None,
        description="File holding the previous key (a mounted Secret; absent outside a rotation); overrides "
        "resume_previous_key.",
    )
    resume_ttl_s: float = Field(1800.0, gt=0, description="Resume tokens older than this are refused.")

    @model_validator(mode="after")
    def _remote_speech_has_a_server(self) -> SessionSettings:
        for stage, backend, url in (
            ("stt", self.stt_backend, self.stt_url),
            ("tts", self.tts_backend, self.tts_url),
        ):
            if backend != "remote":
                continue
            if not url:
                raise ValueError(
                    f"{stage}_backend=remote needs {stage}_url: the base URL of an OpenAI-compatible speech "
                    "server, e.g. http://kokoro-fastapi:8880/v1"
                )
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{stage}_url must be an http:// or https:// URL, got {url!r}")
        # The defaults are chosen here, once, so logs and the warm-up show the model actually requested.
        if self.stt_backend == "remote" and not self.stt_model:
            self.stt_model = REMOTE_STT_MODEL
        if self.tts_backend == "remote" and not self.tts_model:
            self.tts_model = REMOTE_TTS_MODEL
        return self

    @model_validator(mode="after")
    def _bedrock_needs_a_model(self) -> SessionSettings:
        if self.llm_provider == "bedrock" and not self.llm_model:
            raise ValueError(
                "llm_provider=bedrock needs llm_model: the Bedrock model id or inference profile "
                "(e.g. anthropic.claude-3-haiku-20240307-v1:0 or us.anthropic.claude-3-5-haiku-20241022-v1:0)"
            )
        return self

    @model_validator(mode="after")
    def _resume_token_fits_a_frame(self) -> SessionSettings:
        need = budget_plaintext_bytes(self.history_max_chars, self.history_max_messages)
        have = max_plaintext_bytes(self.max_frame_bytes)
        if need > have:
            raise ValueError(
                f"a resume token of the largest history the budget allows ({need} bytes of state) does not "
                f"fit max_frame_bytes={self.max_frame_bytes} ({have} bytes); raise max_frame_bytes or lower "
                "history_max_chars"
            )
        return self

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
