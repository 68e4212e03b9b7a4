"""The VoiceChat operator: reconciles a ``VoiceChat`` into a warm-gated GPU LLM and autoscaled session pods."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voicechat")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

GROUP = "voicechat.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VoiceChat"
PLURAL = "voicechats"
OPERATOR_NAME = "voicechat-operator"
