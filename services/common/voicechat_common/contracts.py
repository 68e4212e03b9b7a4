"""Names and defaults that several parts must agree on, in one dependency-free module.

Importing this registers nothing (no Prometheus metric, no settings class): the operator reads the metric
name the HPA scales on from here instead of importing the session service's metrics module.
"""

from __future__ import annotations

ACTIVE_SESSIONS_METRIC = "voicechat_session_active_sessions"
"""Gauge of open sessions per session pod: the HPA's custom metric (fixed by the design)."""

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one to three short spoken sentences, "
    "without lists, markdown or emoji."
)
"""The system prompt of the LLM warm-up and of every conversation, unless configured otherwise."""
