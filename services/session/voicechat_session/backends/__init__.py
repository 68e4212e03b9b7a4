"""One interface per pipeline stage; implementations are chosen from settings and imported lazily.

- :mod:`.base`: the stage interfaces (``SpeechToText``, ``TextToSpeech``, ``VadModel``/``VadStream``).
- :mod:`.loader`: ``load_models(settings) -> ModelSet`` and ``warm_up(models, settings)``.
- :mod:`.faster_whisper_stt`, :mod:`.kokoro_onnx_tts`, :mod:`.kokoro_torch_tts`, :mod:`.silero_vad`: backends.
- :mod:`.fake`: weight-free stand-ins (``stt_backend=fake``, ``tts_backend=fake``, ``vad_backend=energy``)
  with deterministic output and latency, for the in-process tests and demos.
- :mod:`.embedded`: model files shipped in PyPI packages (the offline defaults).
- PCM16 conversion and resampling live in :mod:`voicechat_session.audio` (not a backend).
- :mod:`.bench`: ``python -m voicechat_session.backends.bench`` measures load time, RSS and time per call.
"""
