"""Keep secrets out of logs, errors and output.

The loader registers every value it substitutes from ``${VAR}``; ``redact``
replaces them (and any password inside a URL) with ``***`` wherever text
leaves the process.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

# Values this short would mask ordinary words and numbers everywhere; they are
# not secrets worth the name, so they are not registered.
_MIN_LENGTH = 3

# scheme://user:PASSWORD@host — greedy up to the last '@' before the path, so
# an unencoded '@' inside the password is still covered.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)([^\s/]*)@")

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Remember ``value`` so ``redact`` masks it from now on."""
    global _pattern
    if not isinstance(value, str) or len(value) < _MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first so a secret containing another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (tests, config reload)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def redact(text: str) -> str:
    """``text`` with every registered secret and URL password replaced by ``***``."""
    if not isinstance(text, str):
        text = str(text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return text


def safe_url(url: str) -> str:
    """The URL with its password (and any registered secret) masked, for display."""
    return redact(url)
