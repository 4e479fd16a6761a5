"""A rule's actions: ``set``, ``activity``, ``sync`` and ``webhook``, one step at a time.

Each action returns what it did (``Done``) for the firing's log and the
record's timeline; a failure that a retry may cure raises ``ActionFailed``
(an unreachable system raises ``SystemUnavailable``: no attempt is spent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crmsync.config.models import (
    ActivityStep,
    Config,
    RuleStep,
    SetStep,
    SyncStep,
    WebhookStep,
)
from crmsync.connectors.base import Connector
from crmsync.convert import ConversionError, converter, to_json
from crmsync.errors import CrmsyncError, SystemUnavailable
from crmsync.model import RecordRef
from crmsync.state.store import StateStore


class ActionFailed(CrmsyncError):
    """The action did not happen; it is tried again (an attempt is spent)."""


@dataclass(slots=True)
class Firing:
    """One time a rule fired: the record, its values then, what changed."""

    id: int
    rule: str
    record: RecordRef
    values: dict[str, Any]
    changed: list[str]
    fired_at: datetime
    step: int
    tried_step: int | None


@dataclass(slots=True)
class Done:
    """What one action did."""

    kind: str
    status: str  # ok | rejected (written without some fields)
    message: str
    target: RecordRef | None = None
    fields: list[dict[str, Any]] = field(default_factory=list)
    # crmsync's own write, entered into the rules' memory (no echo)
    wrote: dict[str, Any] | None = None
    # the record to queue through a link, in the step's own transaction
    queue: tuple[str, str, str] | None = None
    # the entry's id in the system that holds it (an activity), for erasure
    external: str | None = None


# ``{field}`` (a field may be dotted: ``{company.city}``); ``{{`` and ``}}`` are braces.
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")


def _parts(template: str) -> list[tuple[str, bool]]:
    """The template as (text, is_field) parts; raises ValueError on a malformed one."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in _TEMPLATE.finditer(template):
        out.append((template[pos:m.start()], False))
        tok = m.group(0)
        if tok in ("{{", "}}"):
            out.append((tok[0], False))
        elif m.group(1) is None:
            raise ValueError(f"a lone {tok!r} (write {tok * 2} for a brace)")
        elif not _FIELD.match(m.group(1).strip()):
            raise ValueError(f"{{{m.group(1)}}} is not a field name")
        else:
            out.append((m.group(1).strip(), True))
        pos = m.end()
    out.append((template[pos:], False))
    return out


def render(template: str, values: Mapping[str, Any]) -> str:
    """``{field}`` replaced by the record's value (empty for none)."""
    try:
        parts = _parts(template)
    except ValueError:
        return template  # check refuses it; never fail an action on its text
    out = []
    for text, is_field in parts:
        if not is_field:
            out.append(text)
            continue
        v = values.get(text)
        out.append("" if v is None else str(v))
    return "".join(out)


def template_fields(template: str) -> list[str]:
    """The fields a template names; raises ValueError on a malformed one."""
    return [text for text, is_field in _parts(template) if is_field]


class Actions:
    """Runs actions against the live systems and the state."""

    def __init__(
        self, config: Config, state: StateStore, connectors: Mapping[str, Connector]
    ) -> None:
        self.config = config
        self.state = state
        self.connectors = connectors

    def run(self, step: RuleStep, f: Firing) -> Done:
        if isinstance(step, SetStep):
            return self._set(step, f)
        if isinstance(step, ActivityStep):
            return self._activity(step, f)
        if isinstance(step, SyncStep):
            return self._sync(step, f)
        assert isinstance(step, WebhookStep)
        return self._webhook(step, f)

    # ------------------------------------------------------------------
    def paired(self, link: str, ref: RecordRef) -> RecordRef:
        """The record paired with ``ref`` through ``link``; ActionFailed when none yet."""
        lc = self.config.links[link]
        obj = f"{ref.system}.{ref.object}"
        with self.state.connect() as c:
            if obj == lc.source:
                ident = self.state.identities_by_source(c, link, [ref.id]).get(ref.id)
                if ident is not None and ident.target_id and not ident.deleted:
                    return RecordRef(lc.target_system, lc.target_object, ident.target_id)
            else:
                ident = self.state.identities_by_target(c, link, [ref.id]).get(ref.id)
                if ident is not None and not ident.deleted:
                    return RecordRef(lc.source_system, lc.source_object, ident.source_id)
        raise ActionFailed(f"{ref} is not paired through link {link} (yet)")

    def _set(self, step: SetStep, f: Firing) -> Done:
        spec = step.set
        target = self.paired(spec.via, f.record) if spec.via else f.record
        conn = self.connectors[target.system]
        ospec = conn.describe(target.object)
        values: dict[str, Any] = {}
        rejected: dict[str, str] = {}
        for name, raw in spec.values.items():
            fs = ospec.fields.get(name)
            if fs is None:
                rejected[name] = f"field not found on {target.system}.{target.object}"
                continue
            try:
                values[name] = converter(None, fs)(raw)
            except ConversionError as exc:
                rejected[name] = exc.reason
        if values:
            wr = conn.write(target.object, (), [(target.id, values)], ())
            if target.id in wr.errors:
                raise ActionFailed(f"set on {target}: {wr.errors[target.id]}")
            for name, why in wr.refused.get(target.id, {}).items():
                rejected[name] = why
                values.pop(name, None)
        fields = [
            {"field": k, "status": "updated", "side": "target", "old": None, "new": to_json(v)}
            for k, v in values.items()
        ] + [{"field": k, "status": "rejected", "reason": why} for k, why in rejected.items()]
        shown = "; ".join(f"{k} = {to_json(v)}" for k, v in values.items()) or "nothing"
        msg = f"set on {target}: {shown}"
        if rejected:
            msg += "; not set: " + "; ".join(f"{k}: {why}" for k, why in rejected.items())
        return Done("set", "rejected" if rejected else "ok", msg, target, fields,
                    wrote=values or None)

    def _activity(self, step: ActivityStep, f: Firing) -> Done:
        spec = step.activity
        target = self.paired(spec.via, f.record) if spec.via else f.record
        subject = render(spec.subject, f.values)
        body = render(spec.body, f.values)
        conn = self.connectors[target.system]
        ext = conn.add_event_activity(
            target.object, target.id, subject, body, f.fired_at,
            probe=f.tried_step == f.step,
        )
        where = f" (id {ext})" if ext else ""
        return Done("activity", "ok", f"activity on {target}{where}: {subject}", target,
                    external=ext)

    def _sync(self, step: SyncStep, f: Firing) -> Done:
        lc = self.config.links[step.sync]
        side = "source" if f"{f.record.system}.{f.record.object}" == lc.source else "target"
        return Done(
            "sync", "ok", f"queued through link {step.sync}", f.record,
            queue=(step.sync, side, f.record.id),
        )

    def _webhook(self, step: WebhookStep, f: Firing) -> Done:
        import httpx
        from standardwebhooks.webhooks import Webhook

        spec = step.webhook
        body = json.dumps(
            {"rule": f.rule, "record": str(f.record), "values": f.values, "changed": f.changed},
            ensure_ascii=False, sort_keys=True,
        )
        # One id per firing, the same on every retry: receivers drop repeats by it.
        msg_id = f"msg_crmsync_{f.rule}_{f.id}_{int(f.fired_at.timestamp())}"
        now = datetime.now(UTC)
        try:
            sig = Webhook(spec.secret).sign(msg_id, now, body)
        except Exception as exc:  # a secret that is not whsec_/base64: a config problem
            raise ActionFailed(f"webhook secret cannot sign: {exc}") from None
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sig,
            "user-agent": "crmsync",
        }
        try:
            resp = httpx.post(spec.url, content=body.encode(), headers=headers,
                              timeout=spec.timeout, follow_redirects=False)
        except httpx.TimeoutException:
            raise ActionFailed(f"webhook {_host(spec.url)}: no answer in {spec.timeout:g} s")\
                from None
        except httpx.HTTPError as exc:
            raise ActionFailed(f"webhook {_host(spec.url)}: {type(exc).__name__}: {exc}")\
                from None
        if resp.status_code >= 300:
            raise ActionFailed(
                f"webhook {_host(spec.url)} answered {resp.status_code}: {resp.text[:200]}"
            )
        return Done("webhook", "ok", f"webhook {_host(spec.url)} answered {resp.status_code} "
                    f"(webhook-id {msg_id})")


def _host(url: str) -> str:
    # The host only: a URL may carry a token in its path or query.
    import httpx

    try:
        return httpx.URL(url).host or "?"
    except Exception:
        return "?"


__all__ = ["ActionFailed", "Actions", "Done", "Firing", "SystemUnavailable", "render",
           "template_fields"]
