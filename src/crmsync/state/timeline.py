"""Record timelines: one human-readable entry per sync outcome that touched a record.

The entry is rendered from the outcome when read (``state.log``), and for a
target that keeps a timeline of its own (Tryton notes) when it is written
there, so the people who work in the CRM see what crmsync did without opening
crmsync. It sits with the state, which renders it; apply renders the entries
that name related records (their refs are not in the outcome).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from crmsync.model import Action, FieldStatus, Outcome

# Actions that touched the target record, each with its timeline headline.
HEADLINES = {
    Action.CREATED: "Sync completed: record created",
    Action.UPDATED: "Sync completed",
    Action.MATCHED: "Sync completed: matched an existing record",
    Action.DELETED: "Sync completed: deleted at the source",
    Action.FAILED: "Sync failed",
    # A pass that wrote nothing because every changed value was refused.
    Action.REJECTED: "Sync completed: nothing updated",
}


# What json.dumps(v, default=str) uses, built once (dumps builds one per call).
_ENCODE = json.JSONEncoder(default=str).encode


def _show(v: Any) -> str:
    if isinstance(v, str):
        return v
    return _ENCODE(v)


def activity_text(
    out: Outcome, source_ref: str, related: Mapping[str, tuple[str, str]] | None = None
) -> str | None:
    """The timeline entry for an outcome, or None when it did not touch the record.

    ``related`` maps a ref (``company``) to the related record it pointed to
    (``("company", "5")``), so updates of ``company.city`` name that record.
    """
    head = HEADLINES.get(out.action)
    if head is None:
        return None
    if out.action is Action.MATCHED and any(
        f.status is FieldStatus.UPDATED and f.side == "target" for f in out.fields
    ):
        head = "Sync completed: matched an existing record and updated it"
    lines = [f"{head} (crmsync link {out.link}, from {source_ref})"]
    if out.action is Action.FAILED and out.message:
        lines.append(f"Reason: {out.message}")
    own: list[str] = []
    rel: dict[str, list[str]] = {}
    rejected: list[str] = []
    for f in out.fields:
        if f.status is FieldStatus.UPDATED and f.side == "target":
            ref, dot, rest = f.field.partition(".")
            if dot and related is not None and ref in related:
                rel.setdefault(ref, []).append(f"{rest} = {_show(f.new)}")
            else:
                own.append(f"{f.field} = {_show(f.new)}")
        elif f.status is FieldStatus.REJECTED:
            rejected.append(f"{f.field}: {f.reason or 'refused'}")
    if out.action is Action.CREATED and isinstance(out.created, dict):
        own = [
            f"{k} = {_show(v)}"
            for k, v in sorted(out.created.items())
            if k[:1] != "~" and v is not None  # created empty: nothing written
        ]
    if own:
        lines.append("Fields updated: " + "; ".join(own))
    for ref, items in rel.items():
        obj, rid = (related or {})[ref]
        lines.append(f"Related {obj} {rid} ({ref}) updated: " + "; ".join(items))
    if rejected:
        lines.append("Fields not updated: " + "; ".join(rejected))
    if out.action is not Action.FAILED and out.message and out.action is not Action.UPDATED:
        lines.append(out.message)
    return "\n".join(lines)
