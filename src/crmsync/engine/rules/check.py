"""``crmsync check`` for rules: objects, fields, ops per field type, templates, links,
activity tables, set values — against what the live systems describe."""

from __future__ import annotations

from collections.abc import Mapping

from crmsync.config.loader import join_path
from crmsync.config.models import (
    ActivityStep,
    Config,
    RuleConfig,
    SetStep,
    SyncStep,
    WebhookStep,
)
from crmsync.connectors.base import Connector
from crmsync.convert import ConversionError, converter
from crmsync.engine.rules.actions import template_fields
from crmsync.engine.rules.criteria import when_problems
from crmsync.model import ObjectSpec

Problem = tuple[str, str]


def rule_problems(
    config: Config,
    connectors: Mapping[str, Connector],
    specs: Mapping[tuple[str, str], ObjectSpec],
    skip: set[str],
) -> list[Problem]:
    """Problems, each ``(key path, message)``; rules on a system in ``skip``
    (unreachable, or its object failed to describe) are left out."""
    out: list[Problem] = []
    for name, rc in config.rules.items():
        rpath = join_path("rules", name)
        if rc.system in skip:
            continue
        spec = specs.get((rc.system, rc.object))
        if spec is None:
            continue  # its object's problem is reported under systems
        out += _rule(config, connectors, specs, rpath, rc, spec, skip)
    return out


def _rule(
    config: Config,
    connectors: Mapping[str, Connector],
    specs: Mapping[tuple[str, str], ObjectSpec],
    rpath: str,
    rc: RuleConfig,
    spec: ObjectSpec,
    skip: set[str],
) -> list[Problem]:
    out: list[Problem] = [
        (join_path(rpath, "when") + (f".{p}" if p else ""), m)
        for p, m in when_problems(rc.when, spec)
    ]
    fed = any(
        lc.source == rc.on or (lc.target == rc.on and lc.reads_target)
        for lc in config.links.values()
    )
    if not fed and rc.schedule is None:
        out.append((join_path(rpath, "on"),
                    f"no link captures {rc.on}, so the rule would never see a change: give "
                    "the rule a schedule: (e.g. '*/5 * * * *') to capture it itself"))

    def other(via: str | None) -> tuple[str, str] | None:
        """The system and object an action reaches (``via`` a link: the other end)."""
        if via is None:
            return rc.system, rc.object
        lc = config.links.get(via)
        if lc is None:
            return None  # reported when the file was loaded
        if lc.source == rc.on:
            return lc.target_system, lc.target_object
        return lc.source_system, lc.source_object

    for i, step in enumerate(rc.then):
        spath = f"{rpath}.then[{i}]"
        if isinstance(step, SetStep):
            where = other(step.set.via)
            if where is None or where[0] in skip:
                continue
            if config.systems[where[0]].connector == "webhook":
                out.append((f"{spath}.set", f"system {where[0]} is push-only: crmsync cannot "
                            "write to it"))
                continue
            tspec = specs.get(where)
            if tspec is None:
                continue
            for fname, value in step.set.values.items():
                vpath = join_path(f"{spath}.set.values", fname)
                fs = tspec.fields.get(fname)
                if fs is None:
                    out.append((vpath, f"field {fname!r} not found on {'.'.join(where)} "
                                f"(fields: {', '.join(tspec.fields) or 'none'})"))
                    continue
                if fs.read_only:
                    out.append((vpath, f"{fname} is filled by {where[0]} itself: it cannot "
                                "be set"))
                    continue
                try:
                    converter(None, fs)(value)
                except ConversionError as exc:
                    out.append((vpath, f"{value!r} cannot be written to {fname}: {exc.reason}"))
        elif isinstance(step, ActivityStep):
            for key in ("subject", "body"):
                out += _template(getattr(step.activity, key), spec,
                                 f"{spath}.activity.{key}")
            where = other(step.activity.via)
            if where is None or where[0] in skip:
                continue
            out += _activity_target(config, connectors, where, f"{spath}.activity")
        elif isinstance(step, SyncStep):
            lc = config.links.get(step.sync)
            if lc is not None and lc.target == rc.on and not lc.reads_target:
                out.append((f"{spath}.sync",
                            f"link {step.sync} only reads {lc.source}: it cannot sync "
                            f"{rc.on} (its target) through itself"))
        elif isinstance(step, WebhookStep):
            out += _webhook(step, f"{spath}.webhook")
    return out


def _template(text: str, spec: ObjectSpec, path: str) -> list[Problem]:
    try:
        names = template_fields(text)
    except ValueError as exc:
        return [(path, f"template {text!r}: {exc} (use {{field}}; {{{{ for a brace)")]
    unknown = [n for n in names if n not in spec.fields]
    if unknown:
        return [(path, f"template names {', '.join(map(repr, unknown))}, not fields of "
                 f"{spec.name} (fields: {', '.join(spec.fields)})")]
    return []


def _activity_target(
    config: Config,
    connectors: Mapping[str, Connector],
    where: tuple[str, str],
    path: str,
) -> list[Problem]:
    system = where[0]
    kind = config.systems[system].connector
    if kind == "tryton":
        return []
    if kind == "sql":
        if getattr(config.systems[system], "activities", None) is None:
            return [(path, f"system {system} has no activities: table; add "
                     f"systems.{system}.activities {{table, record, subject, body, at}}")]
        why = getattr(connectors[system], "activity_problem", lambda: None)()
        return [(join_path("systems", system) + ".activities", why)] if why else []
    return [(path, f"system {system} ({kind}) cannot hold activities")]


def _webhook(step: WebhookStep, path: str) -> list[Problem]:
    import httpx
    from standardwebhooks.webhooks import Webhook

    out: list[Problem] = []
    try:
        url = httpx.URL(step.webhook.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected an http:// or https:// URL")
    except Exception as exc:
        out.append((f"{path}.url", f"not a URL crmsync can POST to: {exc}"))
    try:
        Webhook(step.webhook.secret)
        if not step.webhook.secret.startswith("whsec_"):
            raise ValueError("expected the whsec_... form")
    except Exception as exc:
        out.append((f"{path}.secret", f"not a Standard Webhooks secret: {exc}"))
    return out


