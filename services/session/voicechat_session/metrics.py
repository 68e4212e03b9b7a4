"""Prometheus metrics of the session service (names fixed by the design; one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from voicechat_common.contracts import ACTIVE_SESSIONS_METRIC, SPECULATIONS_METRIC

PLAYBACK_STALL_MIN_S = 0.02
"""A gap in a reply's audio shorter than this is timer jitter (a client's jitter buffer hides it), not a stall."""

# Voice latency lives between ~10 ms (a warm connect, one TTS chunk) and a few seconds (a slow turn).
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.75,
    1.0,
    1.25,
    1.5,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
)
# A pod-shared connect takes about a millisecond; sharing=connection takes seconds.
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, *LATENCY_BUCKETS)

CONNECT_SECONDS = Histogram(
    "voicechat_session_connect_seconds",
    "WebSocket accepted → session ready message sent.",
    buckets=CONNECT_BUCKETS,
)
TIME_TO_FIRST_AUDIO_SECONDS = Histogram(
    "voicechat_session_time_to_first_audio_seconds",
    "End of user speech (or a typed turn received) → first TTS audio byte sent.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
ACTIVE_SESSIONS = Gauge(ACTIVE_SESSIONS_METRIC, "Open sessions in this pod.")
STT_SECONDS = Histogram(
    "voicechat_session_stt_seconds", "Transcription of one utterance (final pass).", buckets=LATENCY_BUCKETS
)
LLM_TTFT_SECONDS = Histogram(
    "voicechat_session_llm_ttft_seconds", "LLM request sent → first content token.", buckets=LATENCY_BUCKETS
)
TTS_FIRST_CHUNK_SECONDS = Histogram(
    "voicechat_session_tts_first_chunk_seconds",
    "First clause handed to TTS → its audio ready.",
    buckets=LATENCY_BUCKETS,
)
ENDPOINTING_SECONDS = Histogram(
    "voicechat_session_endpointing_seconds",
    "Last speech heard → end of the user's turn decided.",
    buckets=LATENCY_BUCKETS,
)
TURNS_TOTAL = Counter("voicechat_session_turns_total", "Assistant turns started.", ["source"])
INTERRUPTIONS_TOTAL = Counter(
    "voicechat_session_interruptions_total", "Assistant turns interrupted.", ["reason"]
)
ERRORS_TOTAL = Counter("voicechat_session_errors_total", "Error events sent to clients.", ["code"])
LLM_STREAMS_ACTIVE = Gauge("voicechat_session_llm_streams_active", "Open streaming LLM requests.")
LLM_STREAMS_CANCELLED_TOTAL = Counter(
    "voicechat_session_llm_streams_cancelled_total", "LLM streams closed before the reply was complete."
)
TTS_REAL_TIME_FACTOR = Gauge(
    "voicechat_session_tts_real_time_factor",
    "Seconds of speech synthesis (waiting for the model pool included) per second of speech, recent clauses; "
    "above ~0.85 later phrases stop growing, above 1 replies have gaps.",
)
PLAYBACK_STALLS_TOTAL = Counter(
    "voicechat_session_playback_stalls_total",
    "Times a reply's audio ran dry after it began playing: the next chunk was not synthesized in time "
    f"(gaps over {PLAYBACK_STALL_MIN_S * 1000:g} ms).",
)
PLAYBACK_STALL_SECONDS_TOTAL = Counter(
    "voicechat_session_playback_stall_seconds_total",
    "Silence inside replies while the client waited for TTS.",
)
SESSIONS_REFUSED_TOTAL = Counter("voicechat_session_refused_total", "Connections refused.", ["reason"])
MODEL_LOADS_TOTAL = Counter(
    "voicechat_session_model_loads_total",
    "Model sets loaded: once per pod (sharing=pod) or once per connection (sharing=connection).",
    ["scope"],
)
SPECULATIONS_TOTAL = Counter(
    SPECULATIONS_METRIC,
    "Replies started at a pause before the end of turn was decided, by outcome: committed (the turn ended "
    "there), discarded (the user spoke again), aborted (reset, typed turn, interrupt or close first), "
    "saturated (not started: the pod's model pool was busy).",
    ["outcome"],
)
LIMITS_HIT_TOTAL = Counter(
    "voicechat_session_limits_hit_total", "Per-client limits that refused something.", ["limit"]
)
ERRORS_SUPPRESSED_TOTAL = Counter(
    "voicechat_session_errors_suppressed_total", "Error events not sent: over max_errors_per_s."
)
AUTH_FAILURES_TOTAL = Counter(
    "voicechat_session_auth_failures_total",
    "Connections refused for a missing or bad token or Origin.",
    ["reason"],
)
SESSIONS_ABORTED_TOTAL = Counter(
    "voicechat_session_aborted_total",
    "Sessions whose transport was aborted (client not reading: output bound or send timeout).",
    ["reason"],
)
SLOW_HANDSHAKES_TOTAL = Counter(
    "voicechat_session_slow_handshakes_total", "Connections dropped for not sending a request head in time."
)
RESUMES_TOTAL = Counter(
    "voicechat_session_resumes_total",
    "start messages carrying a resume token, by outcome: ok, or why the token was not used (expired, "
    "invalid, foreign_key, oversized, malformed).",
    ["outcome"],
)
RESUME_TOKENS_ISSUED_TOTAL = Counter(
    "voicechat_session_resume_tokens_issued_total", "Resume tokens sent to clients."
)
