"""Configuration: models, loading (with file:line problems) and secrets.

The live check against the systems is ``crmsync.engine.check``. Names are loaded
on first use: importing one light submodule (``secrets``) must not load pydantic,
the YAML reader and the models (the CLI's start-up time).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crmsync.config.loader import (
        SourceMap,
        config_schema,
        load_config,
        load_config_text,
        load_config_with_lines,
    )
    from crmsync.config.models import Config
    from crmsync.config.secrets import clear_secrets, redact, register_secret, safe_url

_WHERE = {
    "Config": "models",
    "SourceMap": "loader",
    "config_schema": "loader",
    "load_config": "loader",
    "load_config_text": "loader",
    "load_config_with_lines": "loader",
    "clear_secrets": "secrets",
    "redact": "secrets",
    "register_secret": "secrets",
    "safe_url": "secrets",
}

__all__ = [
    "Config",
    "SourceMap",
    "clear_secrets",
    "config_schema",
    "load_config",
    "load_config_text",
    "load_config_with_lines",
    "redact",
    "register_secret",
    "safe_url",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value
