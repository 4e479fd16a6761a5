"""`crmsync log` and `open`: what happened to records, and where each one lives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from crmsync.cli.common import (
    ConfigOpt,
    LinkOpt,
    fail,
    field_lines,
    load,
    out,
    refuse_unknown_link,
)
from crmsync.errors import EXIT_CONFIG
from crmsync.model import REQUEST_ACTIONS, Action, RecordRef

if TYPE_CHECKING:
    from crmsync.config.models import Config

# What `log --status` filters on: an outcome's status or its action (erasure
# logs `erased`).
LOG_STATUSES: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            "ok", "failed", "rejected", "conflict", "skipped",
            *(a.value for a in Action), "erased", *REQUEST_ACTIONS,
        ]
    )
)


def log(
    config: ConfigOpt = Path("crmsync.yaml"),
    link: LinkOpt = None,
    status: Annotated[
        str | None,
        typer.Option(
            help="ok, failed, rejected, conflict, skipped, filtered, or an action: created, ..."
        ),
    ] = None,
    record: Annotated[str | None, typer.Option(help="SYSTEM.OBJECT:ID")] = None,
    limit: Annotated[int, typer.Option(help="most recent N outcomes")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The outcome of every record: per field updated (old -> new), conflict or rejected."""
    from crmsync.state.store import StateStore

    cfg = load(config)
    refuse_unknown_link(cfg, link, rules=True)
    if status is not None and status not in LOG_STATUSES:
        raise fail(
            f"--status: unknown value {status!r} (expected one of: {', '.join(LOG_STATUSES)})",
            EXIT_CONFIG,
        )
    if record is not None:
        try:
            record = str(RecordRef.parse(record))
        except ValueError as exc:
            raise fail(f"--record: {exc}", 2) from None
    state = StateStore(cfg.state, readonly=True)
    try:
        rows = state.outcomes(link=link, status=status, record=record, limit=limit)
        timeline = state.activities(record, limit=limit) if record is not None else []
    finally:
        state.close()
    if as_json:
        for r in rows:
            r["at"] = r["at"].isoformat()
            out.print(json.dumps(r, ensure_ascii=False, default=str), markup=False, soft_wrap=True)
        return
    if record is not None and not rows and not timeline:
        # Nothing logged: a typo in the system or object is refused, naming what
        # exists (a record of an object since removed from the config still shows
        # its history above).
        _refuse_unknown_object(cfg, RecordRef.parse(record))
    if timeline:
        _print_timeline(str(record), timeline)
    if not rows:
        out.print("no outcomes match", markup=False)
        return
    t = Table(show_lines=True)
    for col in ("at", "link", "record", "action", "status", "fields"):
        t.add_column(col, overflow="fold")
    for r in reversed(rows):
        rec = " -> ".join(x for x in (r["source_ref"], r["target_ref"]) if x)
        lines = field_lines(r["fields"], all_fields=record is not None)
        if r["message"]:
            lines.insert(0, r["message"])
        t.add_row(
            r["at"].strftime("%Y-%m-%d %H:%M:%S"),
            r["link"],
            rec,
            r["action"],
            r["status"],
            "\n".join(lines),
        )
    out.print(t)


def _refuse_unknown_object(cfg: Config, ref: RecordRef) -> None:
    from crmsync.engine.graph import object_config
    from crmsync.errors import UnknownRecordType

    try:
        object_config(cfg, ref.system, ref.object)
    except UnknownRecordType as exc:
        raise fail(f"--record: {exc.user_message}", EXIT_CONFIG) from None


def _print_timeline(record: str, rows: list[dict[str, Any]]) -> None:
    """The record's activity timeline, oldest first, as the CRM's notes show it."""
    t = Table(title=f"timeline of {record}", show_lines=True)
    for col in ("at", "link", "kind", "activity", "in the system"):
        t.add_column(col, overflow="fold")
    for r in reversed(rows):
        where = "-" if not r["deliver"] else (
            r["delivered_at"].strftime("%Y-%m-%d %H:%M:%S") if r["delivered_at"] else "waiting"
        )
        t.add_row(r["at"].strftime("%Y-%m-%d %H:%M:%S"), r["link"], r["kind"], r["text"], where)
    out.print(t)


def open_record(
    record: Annotated[str, typer.Argument(help="SYSTEM.OBJECT:ID, e.g. crm.company:42")],
    config: ConfigOpt = Path("crmsync.yaml"),
) -> None:
    """The record and every record paired with it, one per line with its URL (deep links)."""
    from crmsync.engine.deeplinks import deep_links
    from crmsync.errors import UnknownRecordType
    from crmsync.state.store import StateStore

    try:
        ref = RecordRef.parse(record)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    cfg = load(config)
    state = StateStore(cfg.state, readonly=True)
    try:
        links = deep_links(cfg, state, ref)
    except UnknownRecordType as exc:
        raise fail(exc.user_message, 2) from None
    finally:
        state.close()
    if len(links) == 1 and not _exists(cfg, ref):
        raise fail(
            f"record {ref} does not exist: not in {ref.system} and not paired by any link",
            EXIT_CONFIG,
        )
    width = max(len(str(d.ref)) for d in links)
    for d in links:
        # Plain print: a terminal must not wrap or restyle a URL someone will click or pipe.
        print(f"{d.ref!s:<{width}}  {d.url or '-'}")


def _exists(cfg: Config, ref: RecordRef) -> bool:
    """Whether the record is in its system (asked live; a push-only system's copy
    is in the state database)."""
    from crmsync.connectors import build_connectors
    from crmsync.state.store import StateStore

    state = StateStore(cfg.state, readonly=True)
    only = cfg.model_copy(update={"systems": {ref.system: cfg.systems[ref.system]}})
    try:
        conn = build_connectors(only, state)[ref.system]
        try:
            return bool(conn.read(ref.object, [ref.id]))
        finally:
            conn.close()
    finally:
        state.close()
