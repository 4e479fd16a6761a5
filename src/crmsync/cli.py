"""The `crmsync` command line: check, plan, sync, log, open, schema.

Exit codes (``crmsync.errors``; README "The CLI"), the same for every command:
0 success; 1 some records failed or a system refused the work; 2 bad
configuration or arguments; 3 a system unreachable (nothing lost, run again).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crmsync.config.models import Config
from crmsync.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    ConfigError,
    CrmsyncError,
    SchemaError,
    SettingError,
    StateUnavailable,
    SystemUnavailable,
)
from crmsync.model import REQUEST_ACTIONS, Action, RecordRef

app = typer.Typer(
    help="crmsync keeps records in step between a CRM and the applications around it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _print_version(value: bool) -> None:
    # Eager: runs while the arguments are parsed, before any command loads a config.
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"crmsync {version('crmsync')}")
    except PackageNotFoundError:
        typer.echo("crmsync (version unknown: the package is not installed)")
    raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version,
            help="Print crmsync's version and exit.",
        ),
    ] = False,
) -> None:
    pass

ConfigOpt = Annotated[Path, typer.Option("-c", "--config", help="config file", show_default=True)]
LinkOpt = Annotated[str | None, typer.Option("--link", help="only this link")]


def _redact(text: str) -> str:
    from crmsync.config.secrets import redact

    return redact(text)


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err.print(f"[red]error:[/red] {_redact(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _load(path: Path) -> Config:
    return _load_with_lines(path)[0]


# The source map of the config this process loaded: a SettingError found later
# (a refused password, a missing SQLite file) is then reported as file:line key.
_loaded: dict[str, Any] = {}


def _load_with_lines(path: Path) -> tuple[Config, Any]:
    from crmsync.config.loader import load_config_with_lines

    try:
        cfg, smap = load_config_with_lines(path)
    except ConfigError as exc:
        _print_problems(exc.problems, "in the configuration")
        raise typer.Exit(EXIT_CONFIG) from None
    _loaded["smap"] = smap
    return cfg, smap


def _print_problems(problems: list[tuple[str, str]], where: str) -> None:
    for loc, msg in problems:
        err.print(f"{loc}: {_redact(msg)}", markup=False, soft_wrap=True)
    err.print(f"{len(problems)} problem(s) {where}", markup=False)


def _setting_location(key: str) -> str:
    smap = _loaded.get("smap")
    return smap.locate(key) if smap is not None else key


@contextmanager
def _engine(path: Path, *, readonly: bool = False) -> Iterator[Any]:
    """Load config, connect systems and state, compile links; close all on exit."""
    from crmsync.connectors import build_connectors
    from crmsync.engine.runner import Engine
    from crmsync.state.store import StateStore

    config = _load(path)
    state = StateStore(config.state, readonly=readonly)
    connectors = build_connectors(config, state)
    try:
        state.migrate()
        yield Engine(config, state, connectors)
    finally:
        state.close()
        for c in connectors.values():
            c.close()


def _live_problems(
    config: Config, path: Path, smap: Any, *, unreachable_ok: bool = False
) -> list[tuple[str, str]]:
    from crmsync.config.check import check_config
    from crmsync.connectors import build_connectors
    from crmsync.state.store import StateStore

    # read-only: check writes nothing; push-only systems describe from config
    state = StateStore(config.state, readonly=True)
    try:
        # Reach the state database now: a refused password or unknown database
        # is reported against `state:` (exit 2), a server that is down exits 3.
        state.version()
    except BaseException:
        state.close()
        raise
    connectors = build_connectors(config, state)
    try:
        return check_config(
            config, connectors, str(path), smap.locate, unreachable_ok=unreachable_ok
        )
    finally:
        for c in connectors.values():
            c.close()
        state.close()


@app.command()
def check(config: ConfigOpt = Path("crmsync.yaml")) -> None:
    """Validate the config file and the live systems it names."""
    from crmsync.config.check import UNREACHABLE

    cfg, smap = _load_with_lines(config)
    problems = _live_problems(cfg, config, smap)
    if problems:
        _print_problems(problems, "found")
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


def _refuse_if_invalid(config: Path) -> None:
    cfg, smap = _load_with_lines(config)
    # A system that is down is no config problem: its links pause (exit 3).
    problems = _live_problems(cfg, config, smap, unreachable_ok=True)
    if problems:
        for loc, msg in problems:
            err.print(f"{loc}: {_redact(msg)}", markup=False, soft_wrap=True)
        raise _fail(
            f"{len(problems)} problem(s) found; nothing was run (see: crmsync check)", EXIT_CONFIG
        )


def _exit_code(reports: list[Any]) -> int:
    """1 when a link failed or records failed, else 3 when a system was unreachable."""
    if any(r.status == "error" or r.summary().get("failed", 0) for r in reports):
        return EXIT_FAILED
    if any(r.status == "paused" for r in reports):
        return EXIT_UNREACHABLE
    return 0


def _unknown_link(cfg: Config, link: str | None) -> None:
    if link is not None and link not in cfg.links:
        raise _fail(f"--link: no link named {link!r} (links: {', '.join(cfg.links)})", EXIT_CONFIG)


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
        s = r.summary()
        status = r.status if not r.error else f"{r.status}: {_redact(r.error)}"
        t.add_row(r.link, r.kind, *(str(s.get(k, 0)) for k in keys), status)
    return t


def _fmt(v: Any) -> str:
    if v is None:
        return "∅"
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)


def _field_lines(fields: list[dict[str, Any]], *, all_fields: bool = False) -> list[str]:
    lines = []
    for f in fields:
        st = f["status"]
        if st == "unchanged" and not all_fields:
            continue
        side = f" ({f['side']})" if f.get("side") == "source" else ""
        if st in ("updated", "conflict"):
            line = f"{f['field']}{side}: {st} {_fmt(f.get('old'))} -> {_fmt(f.get('new'))}"
        else:
            line = f"{f['field']}{side}: {st}"
        if f.get("reason"):
            line += f" — {f['reason']}"
        lines.append(line)
    return lines


@app.command()
def plan(
    config: ConfigOpt = Path("crmsync.yaml"),
    link: LinkOpt = None,
    samples: Annotated[int, typer.Option(help="sample records per link")] = 5,
) -> None:
    """Dry run: what a sync would do. Writes nothing anywhere."""
    _unknown_link(_load(config), link)
    _refuse_if_invalid(config)
    with _engine(config, readonly=True) as engine:
        reports = engine.sync(link, dry_run=True, max_samples=samples)
    out.print(_summary_table("plan (dry run: nothing was written)", reports))
    for r in reports:
        if not r.samples:
            continue
        out.print(f"[bold]{r.link}[/bold]: sample changes", markup=True)
        for o in r.samples:
            head = (
                f"  {o.action.value} source {o.source_id or '-'} -> target {o.target_id or 'new'}"
            )
            if o.message:
                head += f": {o.message}"
            out.print(head, markup=False, soft_wrap=True)
            for line in _field_lines([f.to_json() for f in o.all_fields()])[:8]:
                out.print(f"      {line}", markup=False, soft_wrap=True)
    if code := _exit_code(reports):
        raise typer.Exit(code)


@app.command()
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
    _unknown_link(_load(config), link)  # before the state database is created
    _refuse_if_invalid(config)
    refs = []
    for text in record or []:
        try:
            refs.append(RecordRef.parse(text))
        except ValueError as exc:
            raise _fail(f"--record: {exc}", 2) from None
    missing = False
    with _engine(config) as engine:
        if refs:
            names, missing = _queue_records(engine, refs, link)
            if not names:
                raise _fail("no enabled link reads " + ", ".join(map(str, refs)), 2)
            link = names[0] if len(names) == 1 else link
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
            disable=not err.is_terminal,
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

        engine.progress = report
        with progress:
            reports = engine.sync(link, full=full)
    out.print(_summary_table("sync", reports))
    if code := _exit_code(reports):
        raise typer.Exit(code)
    if missing:
        raise _fail("a requested record does not exist (see above); the others were synced", 2)


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
            raise _fail(f"link {name}: {exc.user_message}; nothing was queued", 3) from None
    if done:
        t = Table(title="requested records")
        for col in ("link", "record", "outcome", "reason"):
            t.add_column(col)
        for r in done:
            t.add_row(r.link, r.ref, r.status, r.reason or "-")
        out.print(t)
    names = list(dict.fromkeys(name for name, _ in wanted))
    return names, any(r.status == "not found" for r in done)


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


@app.command()
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

    cfg = _load(config)
    _unknown_link(cfg, link)
    if status is not None and status not in LOG_STATUSES:
        raise _fail(
            f"--status: unknown value {status!r} (expected one of: {', '.join(LOG_STATUSES)})",
            EXIT_CONFIG,
        )
    if record is not None:
        try:
            record = str(RecordRef.parse(record))
        except ValueError as exc:
            raise _fail(f"--record: {exc}", 2) from None
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
        lines = _field_lines(r["fields"], all_fields=record is not None)
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


@app.command("open")
def open_record(
    record: Annotated[str, typer.Argument(help="SYSTEM.OBJECT:ID, e.g. crm.company:42")],
    config: ConfigOpt = Path("crmsync.yaml"),
) -> None:
    """The record and every record paired with it, one per line with its URL (deep links)."""
    from crmsync.engine.deeplinks import deep_links
    from crmsync.engine.graph import UnknownRecordType
    from crmsync.state.store import StateStore

    try:
        ref = RecordRef.parse(record)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    cfg = _load(config)
    state = StateStore(cfg.state, readonly=True)
    try:
        links = deep_links(cfg, state, ref)
    except UnknownRecordType as exc:
        raise _fail(exc.user_message, 2) from None
    finally:
        state.close()
    if len(links) == 1 and not _exists(cfg, ref):
        raise _fail(
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


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file (for editors)."""
    from crmsync.config.loader import config_schema

    sys.stdout.write(json.dumps(config_schema(), indent=2) + "\n")


from crmsync.service.cli import register as _register_service  # noqa: E402

_register_service(app)

from crmsync.cli_admin import register  # noqa: E402

register(app)


def main() -> None:
    """The entry point: every error becomes one readable message and its exit code."""
    import os

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except SettingError as exc:
        # Before SystemUnavailable (its base): a refused password is a config problem.
        _print_problems(
            [(_setting_location(exc.key), exc.user_message)], "in the configuration"
        )
        sys.exit(EXIT_CONFIG)
    except ConfigError as exc:
        _print_problems(exc.problems, "in the configuration")
        sys.exit(EXIT_CONFIG)
    except SchemaError as exc:
        # The system lacks what the config names (a table, a column): fix the config.
        err.print(f"error: {_redact(str(exc))} (see: crmsync check)", markup=False,
                  soft_wrap=True)
        sys.exit(EXIT_CONFIG)
    except (SystemUnavailable, StateUnavailable) as exc:
        err.print(f"error: {_redact(str(exc))}", markup=False, soft_wrap=True)
        sys.exit(EXIT_UNREACHABLE)
    except CrmsyncError as exc:
        err.print(f"error: {_redact(str(exc))}", markup=False, soft_wrap=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:
        # A bug, not the user's doing: one line (redacted), the traceback on request.
        if os.environ.get("CRMSYNC_DEBUG"):
            raise
        err.print(
            f"error: internal error: {type(exc).__name__}: {_redact(str(exc))} "
            "(set CRMSYNC_DEBUG=1 to see where; please report it)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)
