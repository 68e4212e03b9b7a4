"""Logging filters for kopf's records, installed by ``voicechat-operator`` on top of the common JSON logging."""

from __future__ import annotations

import logging

# kopf's per-object records carry its whole OperatorSettings (and an internal flag) as attributes; the JSON
# formatter would print the settings' repr (~2 KB) on every line. The object reference (k8s_ref) stays.
DROPPED_ATTRIBUTES = ("settings", "k8s_skip")


class DropKopfInternals(logging.Filter):
    """Removes kopf's internal attributes from every record before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in DROPPED_ATTRIBUTES:
            record.__dict__.pop(name, None)
        return True


class DowngradeRetriedThrottling(logging.Filter):
    """A 429 that kopf retries is not an error: a new CRD answers `storage is (re)initializing` once.

    kopf logs every retried request failure at error level; 429 (Too Many Requests) retries become warnings.
    A request that fails for good (kopf "escalating") stays an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (
            record.levelno == logging.ERROR
            and "will retry" in message
            and "APITooManyRequestsError" in message
        ):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def install_filters() -> None:
    """Attach both filters to every root handler: kopf logs API retries through the logger of whichever
    module made the request (watching, patching, ...), so a filter on one logger would miss some."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(DowngradeRetriedThrottling())
        handler.addFilter(DropKopfInternals())
