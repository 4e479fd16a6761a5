"""What every command shares: the consoles, loading the config, the live check
before a run, opening the engine, and how errors and field changes are printed."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from crmsync.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_UNREACHABLE, ConfigError, UnknownLink

if TYPE_CHECKING:
    from crmsync.config.models import Config

ConfigOpt = Annotated[Path, typer.Option("-c", "--config", help="config file", show_default=True)]
LinkOpt = Annotated[str | None, typer.Option("--link", help="only this link")]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def redact(text: str) -> str:
    # Imported late: `crmsync --help` must not load the config machinery.
    from crmsync.config.secrets import redact

    return redact(text)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` (redacted) and return the exit to raise."""
    err.print(f"[red]error:[/red] {redact(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def load(path: Path) -> Config:
    return load_with_lines(path)[0]


# The source map of the config this process loaded: a SettingError found later
# (a refused password, a missing SQLite file) is then reported as file:line key.
_loaded: dict[str, Any] = {}
# A command loads its config up to three times (link check, live check, engine):
# parsed once per file version.
_parsed: dict[tuple[str, int, int], tuple[Config, Any]] = {}
# Connectors the live check before a run built and described, handed on to that
# run's engine: each schema is reflected once per process.
_checked: dict[str, dict[str, Any]] = {}


# Whether ``main`` paused the cyclic collector for start-up (``pause_gc``).
_gc_paused: list[bool] = [False]


def pause_gc() -> None:
    """No cyclic collection while the CLI starts: its imports and config parsing made
    ~180 collections (one full) that freed next to nothing. Measured, whole process,
    no-op sync of a 1M-row link: 0.52 s with them, 0.37 s without (and the freeze)."""
    if gc.isenabled():
        gc.disable()
        _gc_paused[0] = True


def resume_gc(*, freeze: bool = True) -> None:
    """Collect again (after ``pause_gc``). With ``freeze`` what lives now (modules,
    classes, the config) is left out of later collections: they walk only what the
    command makes from here on."""
    if _gc_paused[0]:
        _gc_paused[0] = False
        if freeze:
            gc.freeze()
        gc.enable()


def load_with_lines(path: Path) -> tuple[Config, Any]:
    """The config and its source map; a broken file prints its problems, exit 2."""
    from crmsync.config.loader import load_config_with_lines

    try:
        st = path.stat()
        key: tuple[str, int, int] | None = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # the loader says what is wrong with the path
    if key is not None and key in _parsed:
        cfg, smap = _parsed[key]
    else:
        try:
            cfg, smap = load_config_with_lines(path)
        except ConfigError as exc:
            print_problems(exc.problems, "in the configuration")
            raise typer.Exit(EXIT_CONFIG) from None
        if key is not None:
            _parsed[key] = (cfg, smap)
    _loaded["smap"] = smap
    # Start-up is over (the heavy imports came with the config): every command
    # that does work loads its config before it does.
    resume_gc()
    return cfg, smap


def print_problems(problems: list[tuple[str, str]], where: str) -> None:
    for loc, msg in problems:
        err.print(f"{loc}: {redact(msg)}", markup=False, soft_wrap=True)
    err.print(f"{len(problems)} problem(s) {where}", markup=False)


def print_warnings(warnings: list[tuple[str, str]]) -> None:
    for loc, msg in warnings:
        err.print(f"{loc}: warning: {redact(msg)}", markup=False, soft_wrap=True)
    if warnings:
        err.print(f"{len(warnings)} warning(s)", markup=False)


def setting_location(key: str) -> str:
    smap = _loaded.get("smap")
    return smap.locate(key) if smap is not None else key


@contextmanager
def open_engine(path: Path, *, readonly: bool = False) -> Iterator[Any]:
    """Load config, connect systems and state, compile links; close all on exit."""
    from crmsync.connectors import build_connectors
    from crmsync.engine.runner import Engine
    from crmsync.state.store import StateStore

    config = load(path)
    state = StateStore(config.state, readonly=readonly)
    connectors = build_connectors(config, state, reuse=checked_connectors(path))
    try:
        state.migrate()
        yield Engine(config, state, connectors)
    finally:
        state.close()
        for c in connectors.values():
            c.close()


def live_problems(
    config: Config,
    path: Path,
    smap: Any,
    *,
    unreachable_ok: bool = False,
    keep: dict[str, Any] | None = None,
    warnings: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Every problem of the config against the live systems (``crmsync check``).

    With ``keep`` and no problem, the connectors that hold no state (all but
    push-only ones) go into ``keep`` instead of being closed, for the run.
    With ``warnings``, what ``check_config`` warns about goes there.
    """
    from crmsync.connectors import build_connectors
    from crmsync.engine.check import check_config
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
    problems: list[tuple[str, str]] = []
    try:
        problems = check_config(
            config, connectors, str(path), smap.locate, unreachable_ok=unreachable_ok,
            warnings=warnings,
        )
        return problems
    finally:
        for name, c in connectors.items():
            if keep is not None and not problems and config.systems[name].connector != "webhook":
                keep[name] = c
            else:
                c.close()
        state.close()


def checked_connectors(path: Path) -> dict[str, Any] | None:
    """The connectors ``refuse_if_invalid`` described for ``path``, for the run to use."""
    return _checked.pop(str(path), None)


def refuse_if_invalid(config: Path) -> None:
    """The checks made before anything runs (plan, sync, erase, serve, worker): a
    broken config exits 2; a system that is down is no config problem, its links
    pause (exit 3)."""
    cfg, smap = load_with_lines(config)
    # Left over from an earlier check in this process (not run): closed, not reused.
    for c in _checked.pop(str(config), {}).values():
        c.close()
    keep: dict[str, Any] = {}
    problems = live_problems(cfg, config, smap, unreachable_ok=True, keep=keep)
    _checked[str(config)] = keep
    if problems:
        for loc, msg in problems:
            err.print(f"{loc}: {redact(msg)}", markup=False, soft_wrap=True)
        raise fail(
            f"{len(problems)} problem(s) found; nothing was run (see: crmsync check)", EXIT_CONFIG
        )


def exit_code(reports: list[Any]) -> int:
    """1 when a link failed or records failed, else 3 when a system was unreachable."""
    if any(r.status == "error" or r.summary().get("failed", 0) for r in reports):
        return EXIT_FAILED
    if any(r.status == "paused" for r in reports):
        return EXIT_UNREACHABLE
    return 0


def refuse_unknown_link(cfg: Config, link: str | None, *, rules: bool = False) -> None:
    """``--link`` names a link of the config, or exit 2 listing them."""
    from crmsync.engine.status import require_link

    try:
        require_link(cfg, link, rules=rules)
    except UnknownLink as exc:
        raise fail(f"--link: {exc.user_message}", EXIT_CONFIG) from None


def fmt(v: Any) -> str:
    if v is None:
        return "∅"
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)


def field_lines(fields: list[dict[str, Any]], *, all_fields: bool = False) -> list[str]:
    """One line per field outcome: ``name: updated old -> new — reason``."""
    lines = []
    for f in fields:
        st = f["status"]
        if st == "unchanged" and not all_fields:
            continue
        side = f" ({f['side']})" if f.get("side") == "source" else ""
        if st in ("updated", "conflict"):
            line = f"{f['field']}{side}: {st} {fmt(f.get('old'))} -> {fmt(f.get('new'))}"
        else:
            line = f"{f['field']}{side}: {st}"
        if f.get("reason"):
            line += f" — {f['reason']}"
        lines.append(line)
    return lines
