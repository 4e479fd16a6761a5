"""Configuration: models, loading (with file:line problems), secrets and the live check."""

from crmsync.config.check import check_config
from crmsync.config.loader import (
    SourceMap,
    config_schema,
    load_config,
    load_config_text,
    load_config_with_lines,
)
from crmsync.config.models import Config
from crmsync.config.secrets import clear_secrets, redact, register_secret, safe_url

__all__ = [
    "Config",
    "SourceMap",
    "check_config",
    "clear_secrets",
    "config_schema",
    "load_config",
    "load_config_text",
    "load_config_with_lines",
    "redact",
    "register_secret",
    "safe_url",
]
