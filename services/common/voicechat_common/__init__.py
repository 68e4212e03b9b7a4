"""Small helpers shared by every VoiceChat process: structured logging and the local-stack launcher."""
