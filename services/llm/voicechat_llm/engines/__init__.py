"""Engines behind one interface, chosen by ``settings.engine`` and imported only when chosen.

``llamacpp`` needs xllamacpp (CPU wheel); ``vllm`` needs only the ``vllm`` CLI in the GPU image.
"""

from __future__ import annotations

from voicechat_llm.config import ConfigError, StartPlan
from voicechat_llm.engines.base import Engine, EngineError
from voicechat_llm.settings import LLMSettings

__all__ = ["Engine", "EngineError", "create_engine"]


def create_engine(settings: LLMSettings, plan: StartPlan) -> Engine:
    if plan.engine == "llamacpp":
        from voicechat_llm.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings, plan)
    if plan.engine == "vllm":
        from voicechat_llm.engines.vllm import VllmEngine

        return VllmEngine(settings, plan)
    raise ConfigError(f"unknown engine {plan.engine!r}: use llamacpp or vllm")
