"""Environment variable names of the services, derived from their settings classes (never typed by hand)."""

from __future__ import annotations

from pydantic_settings import BaseSettings


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The variable that sets ``field`` of ``settings_cls``; raises KeyError if the field does not exist."""
    if field not in settings_cls.model_fields:
        raise KeyError(f"{settings_cls.__name__} has no setting {field!r}")
    prefix = settings_cls.model_config.get("env_prefix") or ""
    return f"{prefix}{field}".upper()
