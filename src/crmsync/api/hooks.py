"""``POST /hooks/{system}``: changes pushed by a system, signed per Standard Webhooks.

Order of checks, each refusal writing nothing:

1. the system exists and has a ``webhook_secret`` (else 404);
2. the body fits ``ctx.max_body_bytes`` (413), read with a running count; an
   oversized body is read and discarded up to ``DRAIN_FACTOR`` times the limit
   first, so a sender that writes it all before reading gets the 413, not a reset;
3. headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` are
   present and well formed, the timestamp is within ``ctx.webhook_tolerance_s``
   of ``ctx.clock()`` and a ``v1`` signature matches (401);
4. the body is UTF-8 JSON (400) and each change has the expected shape, names
   a configured object and, for push-only systems, values of the declared
   types (422, with the position of every problem);
5. the delivery id was not accepted before (409).

Then, in one state transaction: the replay row, the pushed records (push-only
systems) and one queued message per record and link that reads it. The answer
(202) is sent only after that commit. For a SQL system ``values`` are ignored:
the record is read from the system itself when the message is applied.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.concurrency import run_in_threadpool

from crmsync.config.models import WebhookSystemConfig
from crmsync.connectors.webhook import PushRejected, WebhookConnector, parse_version
from crmsync.engine.capture import links_reading, queue_records
from crmsync.model import RecordRef, Side
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.hooks")

# Exceptions the standardwebhooks package (and base64/hmac under it) raise on
# hostile input besides its own: all mean "not verified", never a 500.
_VERIFY_ERRORS = (
    WebhookVerificationError,
    ValueError,
    binascii.Error,
    UnicodeDecodeError,
    TypeError,
)
# Visible ASCII only: ids are stored (255 chars max) and echoed in logs.
_ID_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_TS_RE = re.compile(r"^[0-9]{1,12}$")
# More signatures than this in one header is abuse, not key rotation.
_MAX_SIGNATURES = 16


# -- the body ------------------------------------------------------------------


class ChangeIn(BaseModel):
    """One pushed change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    object: Annotated[str, Field(min_length=1, max_length=128)]
    id: Annotated[str, Field(min_length=1, max_length=255)] | StrictInt
    op: Literal["created", "updated", "deleted"]
    values: dict[str, Any] | None = Field(
        None, description="field values; push-only systems: typed by the declared fields"
    )
    version: StrictInt | StrictStr | None = Field(
        None,
        description="integer or ISO timestamp; a change not newer than the stored one "
        "is ignored (push-only systems)",
    )


class DeliveryIn(BaseModel):
    """Several changes in one delivery."""

    model_config = ConfigDict(extra="forbid", strict=True)

    changes: list[ChangeIn] = Field(min_length=1)


# Inlined (no $ref): the route's schema lives inside the app's OpenAPI document.
_CHANGE_SCHEMA: dict[str, Any] = ChangeIn.model_json_schema()
_DELIVERY_SCHEMA: dict[str, Any] = {
    "title": "DeliveryIn",
    "type": "object",
    "properties": {"changes": {"type": "array", "items": _CHANGE_SCHEMA, "minItems": 1}},
    "required": ["changes"],
    "additionalProperties": False,
}


class Accepted(BaseModel):
    accepted: int
    queued: int


def _loc(parts: tuple[int | str, ...] | list[int | str]) -> str:
    """``("changes", 3, "op")`` -> ``changes[3].op``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


def _problems(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[dict[str, str]]:
    out = []
    for e in exc.errors(include_url=False, include_input=False, include_context=False):
        # Union branches add their type name to the location; it helps no sender.
        loc = [p for p in e["loc"] if p not in ("str", "int", "constrained-str")]
        out.append({"loc": _loc(prefix + tuple(loc)), "msg": e["msg"]})
    return out


def _parse_changes(data: Any) -> tuple[list[ChangeIn], str]:
    """The changes of a body and the location prefix of its list; raises ValidationError."""
    if isinstance(data, dict) and "changes" in data:
        return DeliveryIn.model_validate(data).changes, "changes"
    return [ChangeIn.model_validate(data)], ""


# -- the receiver --------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, detail: Any, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.detail = detail
        self.reason = reason  # for the log: never values, bodies or secrets


@dataclass(slots=True)
class _Hook:
    system: str
    verifier: Webhook | None  # None: the secret is configured but unusable
    connector: WebhookConnector | None  # push-only systems only
    objects: frozenset[str]


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["webhooks"])
    committer = _GroupCommit(ctx)
    hooks: dict[str, _Hook] = {}
    for name, sys_cfg in ctx.config.systems.items():
        secret = sys_cfg.webhook_secret
        if not secret:
            continue
        try:
            verifier: Webhook | None = Webhook(secret)
        except Exception:
            # Never include the exception text: it may quote the secret.
            log.error(
                "webhook secret is not a valid whsec_ base64 secret",
                extra={"action": "bad_secret", "system": name},
            )
            verifier = None
        conn = ctx.connectors.get(name)
        hooks[name] = _Hook(
            name,
            verifier,
            conn if isinstance(sys_cfg, WebhookSystemConfig)
            and isinstance(conn, WebhookConnector) else None,
            frozenset(sys_cfg.objects),
        )

    @router.post(
        "/hooks/{system}",
        status_code=202,
        response_model=Accepted,
        summary="Receive changes pushed by a system (Standard Webhooks signature)",
        responses={
            400: {"description": "body is not UTF-8 JSON"},
            401: {"description": "missing or bad signature, or timestamp outside tolerance"},
            404: {"description": "unknown system, or not configured for webhooks"},
            409: {"description": "delivery id already accepted (replay)"},
            413: {"description": "body larger than the limit"},
            422: {"description": "body does not have the expected shape or types"},
        },
        openapi_extra={
            "parameters": [
                {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"anyOf": [_CHANGE_SCHEMA, _DELIVERY_SCHEMA]}
                    }
                },
            },
        },
    )
    async def receive(system: str, request: Request) -> Any:
        try:
            hook = hooks.get(system)
            if hook is None:
                raise _Refused(404, "no system with webhooks by this name", "unknown_system")
            body = await _read_body(request, ctx.max_body_bytes)
            wid, _ts = _verify(hook, body, request, ctx)
            changes = _validate(hook, body, ctx)
            accepted, queued = await run_in_threadpool(
                committer.commit, _Delivery(hook, wid, changes)
            )
            if queued:
                ctx.wake.set()
        except _Refused as r:
            log.warning(
                "webhook refused",
                extra={"action": "refused", "system": system if system in hooks else None,
                       "status": r.status, "reason": r.reason},
            )
            return JSONResponse({"detail": r.detail}, status_code=r.status)
        log.info(
            "webhook accepted",
            extra={"action": "accepted", "system": system, "webhook_id": wid,
                   "changes": accepted, "queued": queued},
        )
        return JSONResponse({"accepted": accepted, "queued": queued}, status_code=202)

    return router


# How much of an oversized body is read (and thrown away) before the 413. A sender
# that writes its whole body before it reads the answer (Python's http.client,
# many webhook senders) would get a connection reset instead of the 413 if the
# server closed with its bytes unread; past this bound it does get the reset,
# and the server reads no further.
DRAIN_FACTOR = 8


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) past ``limit`` bytes; an oversized body is read
    and discarded up to ``DRAIN_FACTOR * limit`` so the sender sees the 413."""
    bound = DRAIN_FACTOR * limit
    too_large = _Refused(413, f"body larger than {limit} bytes", "too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 20:
            raise _Refused(400, "invalid Content-Length", "bad_content_length")
        if int(declared) > bound:
            raise too_large  # not worth reading: the sender may see a reset
    chunks: list[bytes] = []
    size = 0
    # Counted while streaming: chunked bodies carry no Content-Length.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            chunks.clear()  # kept no longer: only counted, up to the bound
            if size > bound:
                raise too_large
            continue
        chunks.append(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


def _verify(hook: _Hook, body: bytes, request: Request, ctx: ServiceContext) -> tuple[str, int]:
    """Check headers, timestamp (against ``ctx.clock``) and signature; returns (id, ts)."""
    if hook.verifier is None:
        raise _Refused(503, "webhook secret of this system is not usable", "bad_secret")
    h = request.headers
    wid, wts, wsig = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (wid and wts and wsig):
        raise _Refused(401, "missing webhook-id, webhook-timestamp or webhook-signature header",
                       "missing_headers")
    if not _ID_RE.match(wid):
        raise _Refused(401, "invalid webhook-id header", "bad_id")
    if not _TS_RE.match(wts):
        raise _Refused(401, "invalid webhook-timestamp header", "bad_timestamp")
    ts = int(wts)
    now = ctx.clock().replace(tzinfo=UTC).timestamp()
    if abs(now - ts) > ctx.webhook_tolerance_s:
        raise _Refused(401, "timestamp outside tolerance", "timestamp_tolerance")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(400, "body is not UTF-8 text", "not_utf8") from None
    try:
        # The package's own signing, with the timestamp checked above against
        # our clock (its verify() would use the wall clock).
        expected = base64.b64decode(
            hook.verifier.sign(wid, datetime.fromtimestamp(ts, UTC), text).split(",", 1)[1]
        )
        entries = wsig.split(" ")
        if len(entries) > _MAX_SIGNATURES:
            raise _Refused(401, "too many signatures", "bad_signature")
        for entry in entries:
            version, _, sig = entry.partition(",")
            if version != "v1" or not sig:
                continue
            try:
                given = base64.b64decode(sig, validate=True)
            except (binascii.Error, ValueError):
                continue
            if hmac.compare_digest(expected, given):
                return wid, ts
    except _VERIFY_ERRORS:
        pass
    raise _Refused(401, "no matching signature", "bad_signature")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _validate(hook: _Hook, body: bytes, ctx: ServiceContext) -> list[ChangeIn]:
    """The delivery's changes, each checked in full; 400/422 listing every problem."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _Refused(400, "body is not valid JSON", "bad_json") from None
    try:
        changes, prefix = _parse_changes(data)
    except ValidationError as exc:
        raise _Refused(422, _problems(exc), "schema") from None
    problems: list[dict[str, str]] = []
    for i, ch in enumerate(changes):
        at = f"{prefix}[{i}]" if prefix else ""

        def pos(key: str, at: str = at) -> str:
            return f"{at}.{key}" if at else key

        if ch.object not in hook.objects:
            problems.append({
                "loc": pos("object"),
                "msg": f"unknown object {ch.object!r} for system {hook.system!r}; "
                f"objects: {', '.join(sorted(hook.objects))}",
            })
            continue
        if hook.connector is None:
            continue  # a SQL system: values are ignored, the record is read at apply
        try:
            parse_version(ch.version)
            hook.connector.check_values(ch.object, ch.values)
        except PushRejected as exc:
            loc = pos("version") if exc.field == "version" else pos(f"values.{exc.field}")
            problems.append({"loc": loc, "msg": exc.reason})
    if problems:
        raise _Refused(422, problems, "values")
    return changes


@dataclass(slots=True, eq=False)
class _Delivery:
    """One verified delivery waiting for its commit; the answer is read after ``done``."""

    hook: _Hook
    wid: str
    changes: list[ChangeIn]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: tuple[int, int] | None = None  # (accepted, queued) once committed
    error: BaseException | None = None
    lead: bool = False  # handed the next group to commit

    def answer(self) -> tuple[int, int]:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class _GroupCommit:
    """Deliveries that arrive while a commit is running are committed together next.

    One transaction and one flush to disk for the whole group instead of one
    each: at a few hundred deliveries a second the receiver's commits, each
    taking the state's writer lock, fsyncing and competing for the GIL with the
    worker, were most of the latency tail. Nothing is acknowledged before it is
    durable: every delivery of a group gets its answer after the group's commit.
    The thread that finds no commit running commits the waiting group (itself
    first); the others wait, and the next waiting delivery is handed the
    following group, so no caller commits more than one group.
    """

    def __init__(self, ctx: ServiceContext, max_group: int = 256) -> None:
        self.ctx = ctx
        self.max_group = max_group
        self._lock = threading.Lock()
        self._waiting: list[_Delivery] = []
        self._busy = False

    def commit(self, d: _Delivery) -> tuple[int, int]:
        """Commit ``d`` (with whatever else is waiting); returns (accepted, queued)."""
        with self._lock:
            self._waiting.append(d)
            lead = not self._busy
            self._busy = True
        if not lead:
            d.done.wait()
            if not d.lead:
                return d.answer()
        with self._lock:
            group = self._waiting[: self.max_group]
            del self._waiting[: self.max_group]
        try:
            _commit_group(self.ctx, group)
        finally:
            with self._lock:
                if self._waiting:
                    nxt = self._waiting[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False
            for other in group:
                if other is not d:
                    other.done.set()
        return d.answer()


def _commit_group(ctx: ServiceContext, group: list[_Delivery]) -> None:
    """Each delivery's outcome or error; one transaction for the group.

    A group that fails as a whole (a push refused since validation, a twin
    delivery committed by another process, the state going away) is rolled
    back and its deliveries committed one by one, so each gets its own answer.
    """
    if len(group) > 1:
        try:
            _commit(ctx, group)
            return
        except Exception:
            for d in group:
                d.outcome = d.error = None
    for d in group:
        try:
            _commit(ctx, [d])
        except Exception as exc:
            d.error = exc


def _commit(ctx: ServiceContext, group: list[_Delivery]) -> None:
    """The deliveries' whole effect in one state transaction; sets each outcome.

    A replayed delivery id is refused (409) before anything of that delivery is
    written, so the others of the group still commit.
    """
    st = ctx.state
    now = ctx.clock()
    enabled = ctx.engine.link_names()
    readers: dict[tuple[str, str], list[tuple[str, Side]]] = {}
    try:
        with st.begin() as c:
            taken: list[_Delivery] = []
            ids_in_group: set[tuple[str, str]] = set()
            for d in group:
                key = (d.hook.system, d.wid)
                # Checked first for a clear answer; the primary key settles a race.
                if key in ids_in_group or st.webhook_delivery_seen(c, *key):
                    d.error = _Refused(
                        409, "delivery already accepted (replayed webhook-id)", "replay"
                    )
                    continue
                ids_in_group.add(key)
                # A write first: on SQLite it takes the write lock before anything
                # is read, so the seq computed below cannot go stale.
                st.add_webhook_delivery(c, d.hook.system, d.wid, now=now)
                taken.append(d)
            # GDPR: a record erased here is never taken in again, not even kept.
            refs = [
                [str(RecordRef(d.hook.system, ch.object, str(ch.id))) for ch in d.changes]
                for d in taken
            ]
            erased = st.erased_refs(c, [r for rs in refs for r in rs])
            # (link, side) -> record ids, in delivery order: one enqueue each.
            queue: dict[tuple[str, Side], dict[str, None]] = {}
            for d, drefs in zip(taken, refs, strict=True):
                hook = d.hook
                touched: dict[str, dict[str, None]] = {}
                for ch, ref in zip(d.changes, drefs, strict=True):
                    rid = str(ch.id)
                    if ref in erased:
                        continue
                    if hook.connector is not None:
                        applied = hook.connector.push(
                            c, ch.object, rid, ch.values, ch.op, ch.version, now=now
                        )
                        if not applied:
                            continue  # older than what is stored: nothing changed
                    touched.setdefault(ch.object, {})[rid] = None
                queued = 0
                for obj, ids in touched.items():
                    obj_readers = readers.get((hook.system, obj))
                    if obj_readers is None:
                        obj_readers = readers[(hook.system, obj)] = links_reading(
                            ctx.config, enabled, hook.system, obj
                        )
                    for link, side in obj_readers:
                        queue.setdefault((link, side), {}).update(ids)
                        queued += len(ids)
                d.outcome = (len(d.changes), queued)
            for (link, side), ids in queue.items():
                queue_records(st, c, link, side, ids)
    except sa.exc.IntegrityError:
        if len(group) == 1:
            d = group[0]
            with st.connect() as c:
                if st.webhook_delivery_seen(c, d.hook.system, d.wid):
                    raise _Refused(
                        409, "delivery already accepted (replayed webhook-id)", "replay"
                    ) from None
        raise
    except PushRejected as exc:  # validated before; kept so a race never answers 500
        raise _Refused(422, [{"loc": exc.field or "body", "msg": exc.reason}], "values") from None
