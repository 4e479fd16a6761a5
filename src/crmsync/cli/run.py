"""`crmsync check`, `plan`, `sync` and `schema`: validate the config, then run the links."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from crmsync.cli.common import (
    ConfigOpt,
    LinkOpt,
    err,
    exit_code,
    fail,
    field_lines,
    live_problems,
    load,
    load_with_lines,
    open_engine,
    out,
    print_problems,
    print_warnings,
    redact,
    refuse_if_invalid,
    refuse_unknown_link,
)
from crmsync.errors import EXIT_CONFIG, EXIT_UNREACHABLE
from crmsync.model import RecordRef


def check(config: ConfigOpt = Path("crmsync.yaml")) -> None:
    """Validate the config file and the live systems it names."""
    from crmsync.engine.check import UNREACHABLE

    cfg, smap = load_with_lines(config)
    warnings: list[tuple[str, str]] = []
    problems = live_problems(cfg, config, smap, warnings=warnings)
    # Warnings (values a values: map would reject) never fail the check: see
    # engine/check.py check_coverage.
    print_warnings(warnings)
    if problems:
        print_problems(problems, "found")
        down = all(msg.startswith(UNREACHABLE) for _, msg in problems)
        raise typer.Exit(EXIT_UNREACHABLE if down else EXIT_CONFIG)
    t = Table(title=f"{config}: OK")
    for col in ("link", "source", "target", "direction", "fields", "match", "filter"):
        t.add_column(col)
    for name, lc in cfg.links.items():
        t.add_row(
            name,
            lc.source,
            lc.target,
            lc.direction.value,
            str(len(lc.fields)),
            ", ".join(f"{k}={v}" for k, v in lc.match.items()) or "-",
            "yes" if lc.filter else "-",
        )
    out.print(t)


def _summary_table(title: str, reports: list[Any]) -> Table:
    t = Table(title=title, pad_edge=False)  # room for every count on 140 columns
    from crmsync.engine.runner import SUMMARY_KEYS

    keys = SUMMARY_KEYS
    t.add_column("link")
    t.add_column("run")
    for k in keys:
        t.add_column(k, justify="right")
    t.add_column("status")
    for r in reports:
        if r.kind == "rule":
            continue
        s = r.summary()
        status = r.status if not r.error else f"{r.status}: {redact(r.error)}"
        t.add_row(r.link, r.kind, *(str(s.get(k, 0)) for k in keys), status)
    return t


# What a rule's pass counts, in the order the rules table shows them.
RULE_KEYS = ("baseline", "captured", "evaluated", "fired", "actions", "failed")


def _rules_table(reports: list[Any]) -> Table | None:
    """One row per rule that ran (``log --link rule:NAME`` shows what each did)."""
    rules = [r for r in reports if r.kind == "rule"]
    if not rules:
        return None
    t = Table(title="rules", pad_edge=False)
    t.add_column("rule")
    for k in RULE_KEYS:
        t.add_column(k, justify="right")
    t.add_column("status")
    for r in rules:
        s = r.summary()
        s["actions"] = sum(v for k, v in s.items() if k.startswith("action_"))
        status = r.status if not r.error else f"{r.status}: {redact(r.error)}"
        t.add_row(r.link.removeprefix("rule:"), *(str(s.get(k, 0)) for k in RULE_KEYS), status)
    return t


def _print_options(reports: list[Any]) -> None:
    """Option lists a run brought in step (``options:``; not in the summary table)."""
    for r in reports:
        done = [
            f"{k.removeprefix('options_')} {v}"
            for k in ("options_created", "options_updated", "options_rejected", "options_failed")
            if (v := r.counts.get(k, 0))
        ]
        if done:
            out.print(f"{r.link}: options {', '.join(done)}", markup=False)


def plan(
    config: ConfigOpt = Path("crmsync.yaml"),
    link: LinkOpt = None,
    samples: Annotated[int, typer.Option(help="sample records per link")] = 5,
) -> None:
    """Dry run: what a sync would do. Writes nothing anywhere."""
    refuse_unknown_link(load(config), link)
    refuse_if_invalid(config)
    with open_engine(config, readonly=True) as engine:
        reports = engine.sync(link, dry_run=True, max_samples=samples)
    out.print(_summary_table("plan (dry run: nothing was written)", reports))
    _print_options(reports)
    if (rt := _rules_table(reports)) is not None:
        out.print(rt)
    for r in reports:
        if not r.samples:
            continue
        if r.kind == "rule":
            out.print(f"[bold]{r.link}[/bold]: would fire", markup=True)
            for ref, changed, actions in r.samples:
                out.print(f"  {ref} (changed: {', '.join(changed)})", markup=False,
                          soft_wrap=True)
                for a in actions:
                    out.print(f"      {redact(a)}", markup=False, soft_wrap=True)
            continue
        out.print(f"[bold]{r.link}[/bold]: sample changes", markup=True)
        for o in r.samples:
            head = (
                f"  {o.action.value} source {o.source_id or '-'} -> target {o.target_id or 'new'}"
            )
            if o.message:
                head += f": {o.message}"
            out.print(head, markup=False, soft_wrap=True)
            for line in field_lines([f.to_json() for f in o.all_fields()])[:8]:
                out.print(f"      {line}", markup=False, soft_wrap=True)
    if code := exit_code(reports):
        raise typer.Exit(code)


def sync(
    config: ConfigOpt = Path("crmsync.yaml"),
    link: LinkOpt = None,
    full: Annotated[bool, typer.Option("--full", help="rescan the whole source")] = False,
    record: Annotated[
        list[str] | None,
        typer.Option(
            "--record",
            help="SYSTEM.OBJECT:ID to sync now (repeatable): queued for every link it "
            "belongs to, then those links run",
        ),
    ] = None,
) -> None:
    """Run the links: the first run migrates, later runs are incremental."""
    refuse_unknown_link(load(config), link)  # before the state database is created
    refuse_if_invalid(config)
    refs = []
    for text in record or []:
        try:
            refs.append(RecordRef.parse(text))
        except ValueError as exc:
            raise fail(f"--record: {exc}", 2) from None
    missing = False
    with open_engine(config) as engine:
        if refs:
            names, missing = _queue_records(engine, refs, link)
            if not names:
                raise fail("no enabled link reads " + ", ".join(map(str, refs)), 2)
            link = names[0] if len(names) == 1 else link
        if err.is_terminal:
            engine.progress, shown = _progress_bars()
            with shown:
                reports = engine.sync(link, full=full)
        else:  # nothing would be shown (piped, cron): no progress machinery at all
            reports = engine.sync(link, full=full)
    out.print(_summary_table("sync", reports))
    _print_options(reports)
    if (rt := _rules_table(reports)) is not None:
        out.print(rt)
    if code := exit_code(reports):
        raise typer.Exit(code)
    if missing:
        raise fail("a requested record does not exist (see above); the others were synced", 2)


def _progress_bars() -> tuple[Any, Any]:
    """A progress callback for the engine and the live display it draws on (stderr)."""
    # Here, not at the top: every command's start (and --help) imports this module.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    tasks: dict[tuple[str, str], tuple[Any, float]] = {}

    def report(name: str, phase: str, done: int, total: int | None) -> None:
        key = (name, phase)
        if key not in tasks:
            tasks[key] = (
                progress.add_task(f"{name}: {phase}", total=total, rate=""),
                time.monotonic(),
            )
        task_id, started = tasks[key]
        elapsed = time.monotonic() - started
        rate = f"{done / elapsed:,.0f} rec/s" if elapsed > 0 else ""
        progress.update(task_id, completed=done, total=total, rate=rate)

    return report, progress


def _queue_records(
    engine: Any, refs: list[RecordRef], only: str | None
) -> tuple[list[str], bool]:
    """Check and queue explicit records for the links they belong to, and print each
    record's outcome (queued, skipped with the reason, not found; also in the log).
    Returns the links that read them and whether a record was not found."""
    from crmsync.engine.requests import request_records
    from crmsync.errors import SystemUnavailable
    from crmsync.model import Side

    wanted: dict[tuple[str, Side], list[str]] = {}
    for name in engine.link_names(only):
        lc = engine.config.links[name]
        for ref in refs:
            obj = f"{ref.system}.{ref.object}"
            side = (
                Side.SOURCE if obj == lc.source
                else Side.TARGET if obj == lc.target and lc.reads_target
                else None
            )
            if side is not None:
                wanted.setdefault((name, side), []).append(ref.id)
    done = []
    for (name, side), ids in wanted.items():
        try:
            done += request_records(engine, name, side, ids, actor="cli")
        except SystemUnavailable as exc:
            raise fail(f"link {name}: {exc.user_message}; nothing was queued", 3) from None
    if done:
        t = Table(title="requested records")
        for col in ("link", "record", "outcome", "reason"):
            t.add_column(col)
        for r in done:
            t.add_row(r.link, r.ref, r.status, r.reason or "-")
        out.print(t)
    names = list(dict.fromkeys(name for name, _ in wanted))
    return names, any(r.status == "not found" for r in done)


def schema() -> None:
    """Print the JSON Schema of the config file (for editors)."""
    from crmsync.config.loader import config_schema

    sys.stdout.write(json.dumps(config_schema(), indent=2) + "\n")

