"""A small thread-safe JSON-RPC client for Tryton (tested against trytond 8.2).

One ``TrytonRPC`` is shared by all worker threads: the HTTP connection pool is
httpx's (thread-safe), the session is guarded by a lock, and a session that
expires is renewed once by whichever thread notices first.

Typed values travel as Tryton's ``{"__class__": ...}`` objects both ways
(datetime, date, time, timedelta, Decimal, bytes). Tryton stores naive UTC, so
aware datetimes are converted to UTC before they are sent.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import httpx

from crmsync.errors import CrmsyncError, SystemUnavailable

# Tryton's exception classes that arrive as ``[kind, args]`` in a JSON-RPC error.
_TRYTON_KINDS = frozenset({"UserError", "UserWarning", "LoginException", "ConcurrencyException"})
# Server-level methods answer at /rpc/, without a database or a session.
_ROOT_METHODS = frozenset(
    {"common.server.version", "common.db.list", "common.authentication.services"}
)


class TrytonError(CrmsyncError):
    """Tryton refused a call: ``kind`` is Tryton's exception name (``UserError``,
    ``ConcurrencyException``, ...) or ``Forbidden``/``ServerError``/``HTTP<code>``."""

    def __init__(self, kind: str, message: str, *, description: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.description = description

    def __repr__(self) -> str:
        return f"TrytonError(kind={self.kind!r}, message={self.user_message!r})"


def _encode(obj: Any) -> Any:
    """``json.dumps`` hook: Python values Tryton knows -> its ``__class__`` objects."""
    if isinstance(obj, datetime):
        if obj.tzinfo is not None:
            obj = obj.astimezone(UTC).replace(tzinfo=None)
        return {
            "__class__": "datetime",
            "year": obj.year,
            "month": obj.month,
            "day": obj.day,
            "hour": obj.hour,
            "minute": obj.minute,
            "second": obj.second,
            "microsecond": obj.microsecond,
        }
    if isinstance(obj, date):
        return {"__class__": "date", "year": obj.year, "month": obj.month, "day": obj.day}
    if isinstance(obj, time):
        return {
            "__class__": "time",
            "hour": obj.hour,
            "minute": obj.minute,
            "second": obj.second,
            "microsecond": obj.microsecond,
        }
    if isinstance(obj, timedelta):
        return {"__class__": "timedelta", "seconds": obj.total_seconds()}
    if isinstance(obj, Decimal):
        return {"__class__": "Decimal", "decimal": str(obj)}
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"__class__": "bytes", "base64": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} to Tryton")


def _decode(dct: dict[str, Any]) -> Any:
    """``json.loads`` hook: Tryton's ``__class__`` objects -> Python values."""
    kind = dct.get("__class__")
    if kind is None:
        return dct
    if kind == "datetime":
        return datetime(
            dct["year"], dct["month"], dct["day"],
            dct["hour"], dct["minute"], dct["second"], dct["microsecond"],
        )  # fmt: skip
    if kind == "date":
        return date(dct["year"], dct["month"], dct["day"])
    if kind == "time":
        return time(dct["hour"], dct["minute"], dct["second"], dct["microsecond"])
    if kind == "timedelta":
        return timedelta(seconds=dct["seconds"])
    if kind == "Decimal":
        return Decimal(dct["decimal"])
    if kind == "bytes":
        return base64.b64decode(dct["base64"])
    return dct


def dumps(value: Any) -> str:
    """JSON text with Tryton's typed values (recursively, in lists and dicts)."""
    return json.dumps(value, default=_encode, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """Parse Tryton JSON, turning its typed values back into Python ones."""
    return json.loads(text, object_hook=_decode)


def _error_from(error: Any) -> TrytonError:
    """A readable ``TrytonError`` from the ``error`` member of a JSON-RPC answer.

    Tryton sends ``[kind, args]`` for its own exceptions (AccessError and the
    validation errors are all ``UserError``) and ``[str(exc), traceback]`` for
    any other server exception.
    """
    if isinstance(error, list | tuple) and error:
        head, rest = error[0], error[1] if len(error) > 1 else None
        if head in _TRYTON_KINDS:
            if isinstance(rest, list | tuple):
                parts = [p for p in rest if isinstance(p, str)]
                if head in ("UserWarning", "LoginException") and len(parts) > 1:
                    parts = parts[1:]  # the first member is a name, not text
                message = parts[0] if parts else head
                # LoginException's last member is an input type, not a description.
                has_text = len(parts) > 1 and head != "LoginException"
                description = parts[1] if has_text else ""
            else:
                message, description = str(rest) if rest else head, ""
            return TrytonError(head, message, description=description)
        # The traceback is left out of the message: it can be long and holds internals.
        # Outside dev mode the traceback is empty and str(exc) may be a bare KeyError key.
        return TrytonError("ServerError", f"Tryton server error: {head}")
    return TrytonError("ServerError", str(error))


class _Session:
    """The login result; ``generation`` tells threads whether someone already renewed it."""

    __slots__ = ("context", "generation", "header", "uid")

    def __init__(self, uid: int, header: str, context: dict[str, Any], generation: int) -> None:
        self.uid = uid
        self.header = header
        self.context = context
        self.generation = generation

    def __repr__(self) -> str:
        return f"_Session(uid={self.uid}, generation={self.generation})"


class TrytonRPC:
    """Calls ``model.<model>.<method>`` and friends on one Tryton database."""

    def __init__(
        self, url: str, database: str, user: str, password: str, timeout: float = 30.0
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.user = user
        self._password = password
        self._http = httpx.Client(timeout=timeout, headers={"Content-Type": "application/json"})
        self._login_lock = threading.Lock()
        self._session: _Session | None = None
        self._generation = 0
        self._count_lock = threading.Lock()
        self._total_calls = 0
        self._local = threading.local()
        self._ids = 0

    def __repr__(self) -> str:
        return f"TrytonRPC(url={self.url!r}, database={self.database!r}, user={self.user!r})"

    # -- counting (quotas) ------------------------------------------------

    def count_calls(self) -> int:
        """HTTP RPC calls made by all threads, logins and retries included."""
        with self._count_lock:
            return self._total_calls

    def thread_calls(self) -> int:
        """HTTP RPC calls made by the current thread."""
        return getattr(self._local, "calls", 0)

    # -- session ----------------------------------------------------------

    @property
    def login_count(self) -> int:
        """Successful logins so far (1 + the number of session renewals)."""
        return self._generation

    @property
    def uid(self) -> int | None:
        """The logged-in user's id (None before the first login)."""
        session = self._session
        return session.uid if session else None

    @property
    def context(self) -> dict[str, Any]:
        """The user context sent with every model call (a copy)."""
        return dict(self._ensure_session().context)

    def login(self) -> None:
        """Log in now (calls log in lazily; this makes a bad password fail early)."""
        self._renew(None)

    def _ensure_session(self) -> _Session:
        session = self._session
        return session if session is not None else self._renew(None)

    def _renew(self, stale: _Session | None) -> _Session:
        """Log in unless another thread has already replaced ``stale``."""
        with self._login_lock:
            current = self._session
            if current is not None and current is not stale:
                return current
            self._session = None
            answer = self._post(
                f"/{self.database}/rpc/",
                "common.db.login",
                [self.user, {"password": self._password}, "en"],
                None,
            )
            if not isinstance(answer, list) or len(answer) < 2:
                raise TrytonError("LoginError", f"unexpected login answer for user {self.user}")
            uid, token = int(answer[0]), str(answer[1])
            raw = f"{self.user}:{uid}:{token}".encode()
            header = "Session " + base64.b64encode(raw).decode("ascii")
            try:
                prefs = self._post(
                    f"/{self.database}/rpc/", "model.res.user.get_preferences", [True, {}], header
                )
            except _SessionRejected as exc:
                raise exc.error() from None
            self._generation += 1
            session = _Session(uid, header, dict(prefs or {}), self._generation)
            self._session = session
            return session

    # -- calls ------------------------------------------------------------

    def call(self, method: str, *args: Any, context: Mapping[str, Any] | None = None) -> Any:
        """Call ``method`` with ``args``; model/wizard/report calls get the user
        context (merged with ``context``) as their last parameter."""
        if method in _ROOT_METHODS:
            return self._post("/rpc/", method, list(args), None)
        if method == "common.db.login":
            raise ValueError("use login(): the client manages its own session")
        path = f"/{self.database}/rpc/"
        session = self._ensure_session()
        for attempt in (1, 2):
            params = list(args)
            if not method.startswith("common."):
                params.append({**session.context, **(context or {})})
            try:
                return self._post(path, method, params, session.header)
            except _SessionRejected as exc:
                if attempt == 2:
                    raise exc.error() from None
                session = self._renew(session)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection pool (the server session is left to expire)."""
        self._http.close()

    def __enter__(self) -> TrytonRPC:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, method: str, params: list[Any], auth: str | None) -> Any:
        with self._count_lock:
            self._total_calls += 1
            self._ids += 1
            request_id = self._ids
        self._local.calls = getattr(self._local, "calls", 0) + 1
        headers = {"Authorization": auth} if auth else None
        where = f"Tryton at {self.url} ({method})"
        try:
            response = self._http.post(
                self.url + path,
                content=dumps({"id": request_id, "method": method, "params": params}),
                headers=headers,
            )
        except httpx.TimeoutException as exc:
            raise SystemUnavailable(f"{where}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise SystemUnavailable(f"{where}: unreachable ({exc})") from exc
        status = response.status_code
        if status in (401, 403) and auth is not None:
            raise _SessionRejected(status, method)
        if status == 401 and method == "common.db.login":
            raise TrytonError("LoginError", f"Tryton refused the login of user {self.user}")
        if status >= 500 or status == 429:
            # 429 is Tryton's login rate limit: waiting is the remedy, as for an outage.
            raise SystemUnavailable(f"{where}: HTTP {status}")
        if status != 200:
            kind = {403: "Forbidden", 404: "NotFound"}.get(status, f"HTTP{status}")
            raise TrytonError(kind, f"{where}: HTTP {status}")
        try:
            answer = loads(response.content)
        except ValueError as exc:
            raise SystemUnavailable(f"{where}: answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise SystemUnavailable(f"{where}: answer is not a JSON-RPC object")
        if answer.get("error") is not None:
            raise _error_from(answer["error"])
        return answer.get("result")


class _SessionRejected(Exception):
    """HTTP 401/403 on an authenticated call: renew the session and retry once."""

    def __init__(self, status: int, method: str) -> None:
        super().__init__(status, method)
        self.status = status
        self.method = method

    def error(self) -> TrytonError:
        # A 403 that survives a fresh login is a method not exposed over RPC.
        if self.status == 403:
            return TrytonError("Forbidden", f"Tryton forbids {self.method} (HTTP 403)")
        return TrytonError("LoginError", f"Tryton rejected a fresh session for {self.method}")
