"""VoiceChat shared LLM service: one warm OpenAI-compatible engine (vLLM or llama.cpp) behind a warm-up gate."""
