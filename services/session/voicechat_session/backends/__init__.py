"""One interface per pipeline stage; implementations are chosen from settings and imported lazily.

- :mod:`.base`: the stage interfaces (``SpeechToText``, ``TextToSpeech``, ``VadModel``/``VadStream``; remote:
  ``AsyncSpeechToText``, ``StreamingTextToSpeech``, ``SpeechServerError``).
- :mod:`.loader`: ``load_models(settings) -> ModelSet``, ``warm_up_async(models, settings, run_blocking)``
  (``warm_up`` for in-process models without an event loop) and ``close_models``.
- :mod:`.remote`: an OpenAI-compatible speech server (``stt_backend=remote``, ``tts_backend=remote``).
- :mod:`.faster_whisper_stt`, :mod:`.kokoro_onnx_tts`, :mod:`.kokoro_torch_tts`, :mod:`.silero_vad`: backends.
- :mod:`.fake`: weight-free stand-ins (``stt_backend=fake``, ``tts_backend=fake``, ``vad_backend=energy``)
  with deterministic output and latency, for the in-process tests and demos.
- :mod:`.embedded`: model files shipped in PyPI packages (the offline defaults).
- PCM16 conversion and resampling live in :mod:`voicechat_session.audio` (not a backend).
- :mod:`.bench`: ``python -m voicechat_session.backends.bench`` measures load time, RSS and time per call.
"""
