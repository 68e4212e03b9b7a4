"""``voicechat-llm``: settings from CLI flags over ``VOICECHAT_LLM_*`` environment, checked, then served.

Exit codes: 0 clean stop (SIGTERM/SIGINT), 1 the engine failed to start or warm up, 2 wrong configuration.
Failures end with one line on stderr that says what to fix (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from voicechat_common.logging import configure_logging
from voicechat_llm.config import ConfigError, flag_and_env, plan
from voicechat_llm.engines import EngineError
from voicechat_llm.settings import LLMSettings
from voicechat_llm.warmup import WarmupError

PROG = "voicechat-llm"
EXIT_START_FAILED = 1
EXIT_BAD_CONFIG = 2

log = logging.getLogger("voicechat_llm")

DESCRIPTION = (
    "Shared LLM service: one warm OpenAI-compatible engine (llama.cpp in-process, or a `vllm serve` child) "
    "on --engine-port, and a gate on --gate-port (/livez /readyz /warmup /metrics) that turns ready only "
    "after real generations with the system prompt. Every flag can also be set as VOICECHAT_LLM_<NAME>; "
    "flags win."
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def describe_validation_error(err: ValidationError) -> str:
    """All problems of a settings validation in one line, each naming its flag and variable."""
    problems = []
    for item in err.errors():
        field = str(item["loc"][0]) if item["loc"] else "settings"
        where = flag_and_env(field) if field in LLMSettings.model_fields else field
        problems.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
    return "invalid configuration: " + "; ".join(problems)


def parse_settings(argv: list[str]) -> LLMSettings:
    parser = _OneLineParser(prog=PROG, description=DESCRIPTION)
    source: CliSettingsSource[LLMSettings] = CliSettingsSource(LLMSettings, root_parser=parser)
    try:
        return LLMSettings(_cli_settings_source=source(args=argv))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from err


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
        start_plan = plan(settings)
    except ConfigError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return EXIT_BAD_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_level != "debug":
        # One line per health probe and warm-up request drowns the service's own logs.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if start_plan.api_key is None:
        log.warning(
            "the engine port needs no API key: anyone who reaches it may generate",
            extra={"host": settings.host, "port": settings.engine_port},
        )
    # Imported late: it pulls in FastAPI/uvicorn, which --help and config errors do not need.
    from voicechat_llm.service import run_service

    try:
        return run_service(settings, start_plan)
    except (EngineError, WarmupError) as err:
        log.error("start failed", extra={"error": str(err)})
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return EXIT_START_FAILED
