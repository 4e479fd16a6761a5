"""Database and server URLs checked without I/O: the text parses, the dialect is known,
its driver is installed. The URL itself is never quoted in a message (it may hold a
password); only its scheme is."""

from __future__ import annotations

_URL_EXAMPLES = "sqlite:///crm.db, postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"
# Dialect names people write that SQLAlchemy does not know, with the one to use.
_DIALECT_HINTS = {
    "postgres": "postgresql+psycopg://",
    "postgresql": "postgresql+psycopg://",
    "psql": "postgresql+psycopg://",
    "pg": "postgresql+psycopg://",
    "mysql": "mysql+pymysql://",
    "mariadb": "mysql+pymysql://",
    "sqlite3": "sqlite:///",
}


def sql_url_problem(url: str, *, driver: bool = True) -> str | None:
    """Why ``url`` cannot be used as a SQLAlchemy URL here, or None.

    Checks what needs no server: the text parses, SQLAlchemy knows the dialect
    and (with ``driver``) its driver is installed. The URL itself is never quoted
    (it may hold a password); only its scheme is.
    """
    import sqlalchemy as sa

    text = url.strip()
    if not text:
        return (
            "the URL is empty (an environment variable set to nothing?); "
            f"expected a URL such as {_URL_EXAMPLES}"
        )
    try:
        parsed = sa.make_url(text)
    except ValueError:  # a port that is not a number
        return "the port in the database URL is not a number"
    except sa.exc.ArgumentError:
        if "://" not in text:
            hint = f"expected a URL such as {_URL_EXAMPLES}"
            if text.startswith("sqlite:"):
                hint = "a SQLite file is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            elif "/" in text or text.endswith((".db", ".sqlite", ".sqlite3")):
                hint = "a SQLite file is written sqlite:///PATH"
            return f"not a database URL (no SCHEME://); {hint}"
        return f"cannot parse the database URL; expected a URL such as {_URL_EXAMPLES}"
    scheme = parsed.drivername
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        return (
            "a SQLite URL has three slashes before a relative path (sqlite:///crm.db) and "
            "four before an absolute one (sqlite:////data/crm.db)"
        )
    try:
        dialect = parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        hint = _DIALECT_HINTS.get(parsed.get_backend_name())
        use = f"; use {hint}" if hint and hint != f"{scheme}://" else ""
        return f"unknown database kind {scheme + '://'!r}{use} (expected one of: {_URL_EXAMPLES})"
    if not driver:
        return None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        hint = _DIALECT_HINTS.get(parsed.get_backend_name(), "")
        use = f"; use {hint}" if hint else ""
        missing = getattr(exc, "name", None) or "its driver"
        return f"the driver for {scheme + '://'!r} is not installed ({missing}){use}"
    return None


def http_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a server's http(s) URL, or None."""
    import httpx

    text = url.strip()
    if not text:
        return "the URL is empty (an environment variable set to nothing?); expected http://HOST:PORT"
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        return "cannot parse the URL; expected http://HOST:PORT or https://HOST"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "expected http://HOST:PORT or https://HOST"
    return None
