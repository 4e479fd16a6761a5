"""Configuration: models, loading (with file:line problems) and secrets.

The live check against the systems is ``crmsync.engine.check``.
"""

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
    "clear_secrets",
    "config_schema",
    "load_config",
    "load_config_text",
    "load_config_with_lines",
    "redact",
    "register_secret",
    "safe_url",
]
