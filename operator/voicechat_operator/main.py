"""``voicechat-operator``: kopf running the VoiceChat handlers, configured from ``VOICECHAT_OPERATOR_*``."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from voicechat_common.logging import configure_logging
from voicechat_operator import __version__
from voicechat_operator.handlers import build_registry
from voicechat_operator.logs import install_filters
from voicechat_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)


def kopf_options(settings: OperatorSettings) -> dict[str, Any]:
    """Keyword arguments of ``kopf.run`` / ``kopf.operator`` for these settings (tests start kopf the same way)."""
    return {
        "registry": build_registry(settings),
        "clusterwide": settings.clusterwide,
        "namespaces": settings.namespaces,
        "standalone": settings.standalone,
        # A peering name makes peering mandatory in kopf: only pass it when replicas must coordinate.
        "peering_name": None if settings.standalone else settings.peering_name,
        "priority": settings.priority,
        "liveness_endpoint": settings.liveness_endpoint,
    }


def main() -> None:
    settings = OperatorSettings()
    configure_logging(settings.log_level, settings.log_format)
    install_filters()
    logger.info(
        "starting",
        extra={
            "version": __version__,
            "namespaces": settings.namespaces or "*",
            "peering": None if settings.standalone else settings.peering_name,
        },
    )
    kopf.run(**kopf_options(settings))


if __name__ == "__main__":
    main()
