"""VoiceChat load test: simulated voice users against a session service, and the shared-vs-per-connection benchmark."""

__version__ = "0.1.0"
