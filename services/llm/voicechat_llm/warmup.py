"""Warm-up: real streaming chat completions with the system prompt, timed.

The first generation fills the engine's prefix cache with the system prompt; the figures that decide
readiness come from the ones after it (the warm state every client will see).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from voicechat_common.openai_stream import StreamFormatError, chunk_content, parse_sse_data
from voicechat_llm.report import WarmupSample

log = logging.getLogger(__name__)


class WarmupError(RuntimeError):
    """A warm-up generation failed (bad status, malformed stream, or no content)."""


def chat_messages(system_prompt: str, user_prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}]


def chat_request(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """A streaming, greedy OpenAI chat request that also asks for token usage."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass
class StreamResult:
    text: str
    ttft_seconds: float
    total_seconds: float
    completion_tokens: int
    last_token_seconds: float

    def sample(self) -> WarmupSample:
        rate = None
        decode_s = self.last_token_seconds - self.ttft_seconds
        if self.completion_tokens > 1 and decode_s > 0:
            rate = (self.completion_tokens - 1) / decode_s
        return WarmupSample(
            ttft_seconds=self.ttft_seconds,
            total_seconds=self.total_seconds,
            completion_tokens=self.completion_tokens,
            tokens_per_second=rate,
        )


async def stream_chat(client: httpx.AsyncClient, base_url: str, request: dict[str, Any]) -> StreamResult:
    """Run one streaming chat completion and time it (TTFT = request sent → first content)."""
    started = time.perf_counter()
    first: float | None = None
    last = started
    parts: list[str] = []
    chunks = 0
    usage_tokens: int | None = None
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=request) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")[:200]
            raise WarmupError(f"chat completion answered {response.status_code}: {body}")
        async for line in response.aiter_lines():
            try:
                chunk = parse_sse_data(line)
            except StreamFormatError as err:
                raise WarmupError(str(err)) from err
            if chunk is None:
                continue
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage_tokens = usage["completion_tokens"]
            content = chunk_content(chunk)
            if content:
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                chunks += 1
                parts.append(content)
    total = time.perf_counter() - started
    if first is None:
        raise WarmupError("the engine streamed no content")
    return StreamResult(
        text="".join(parts),
        ttft_seconds=first - started,
        total_seconds=total,
        completion_tokens=usage_tokens if usage_tokens is not None else chunks,
        last_token_seconds=last - started,
    )


def warmup_user_turn(user_prompt: str, index: int) -> str:
    """The user turn of warm-up generation ``index``.

    Each one differs, so a warm generation reuses only the cached system prompt and evaluates a fresh
    user turn, as a real client's request does (an identical prompt would be served almost entirely
    from the cache and understate the TTFT).
    """
    return user_prompt if index == 0 else f"{user_prompt} ({index + 1})"


def warm_figures(samples: list[WarmupSample]) -> tuple[float, float | None]:
    """(warm TTFT, warm tokens/s): medians over the generations after the cold first one."""
    warm = samples[1:] or samples
    ttft = statistics.median(s.ttft_seconds for s in warm)
    rates = [s.tokens_per_second for s in warm if s.tokens_per_second is not None]
    return ttft, (statistics.median(rates) if rates else None)


async def run_warmup(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    system_prompt: str,
    user_prompt: str,
    requests: int,
    max_tokens: int,
) -> list[WarmupSample]:
    samples: list[WarmupSample] = []
    for index in range(requests):
        messages = chat_messages(system_prompt, warmup_user_turn(user_prompt, index))
        result = await stream_chat(client, base_url, chat_request(model, messages, max_tokens))
        sample = result.sample()
        samples.append(sample)
        log.info(
            "warm-up generation",
            extra={
                "index": index,
                "ttft_s": round(sample.ttft_seconds, 4),
                "tokens": sample.completion_tokens,
                "tokens_per_s": None
                if sample.tokens_per_second is None
                else round(sample.tokens_per_second, 1),
                "reply": result.text[:80],
            },
        )
    return samples
