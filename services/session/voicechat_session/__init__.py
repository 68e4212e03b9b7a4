"""VoiceChat session service: per-connection STT, TTS and history over a WebSocket, shared model weights."""
