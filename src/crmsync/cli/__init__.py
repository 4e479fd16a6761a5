"""The `crmsync` command line: the app, its commands, and ``main`` (the entry point).

Commands live by concept: ``run`` (check, plan, sync, schema), ``records``
(log, open), ``serve`` (serve, worker) and ``admin`` (token, retry, status,
erase); ``common`` holds what they share.

Exit codes (``crmsync.errors``; README "The CLI"), the same for every command:
0 success; 1 some records failed or a system refused the work; 2 bad
configuration or arguments; 3 a system unreachable (nothing lost, run again).
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Annotated

# The imports below (typer, rich, the commands) without the cyclic collector:
# ~45 collections that free next to nothing (see common.pause_gc). What they
# made is then frozen (left out of later collections; a collector merely
# re-enabled would walk it all at its next pass). ``main`` pauses it again for
# the command's start.
_collecting = gc.isenabled()
gc.disable()
try:
    import typer

    from crmsync.cli import admin, records, run, serve
    from crmsync.cli.common import (
        err,
        pause_gc,
        print_problems,
        redact,
        resume_gc,
        setting_location,
    )
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
finally:
    if _collecting:
        gc.freeze()
        gc.enable()

__all__ = ["app", "main"]

app = typer.Typer(
    help="crmsync keeps records in step between a CRM and the applications around it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


# The order here is the order `crmsync --help` lists them.
app.command()(run.check)
app.command()(run.plan)
app.command()(run.sync)
app.command()(records.log)
app.command("open")(records.open_record)
app.command()(run.schema)
serve.register(app)
admin.register(app)


def main() -> None:
    """The entry point: every error becomes one readable message and its exit code."""
    import os

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pause_gc()  # until the config is loaded (common.load_with_lines)
    try:
        app()
    except SettingError as exc:
        # Before SystemUnavailable (its base): a refused password is a config problem.
        print_problems([(setting_location(exc.key), exc.user_message)], "in the configuration")
        sys.exit(EXIT_CONFIG)
    except ConfigError as exc:
        print_problems(exc.problems, "in the configuration")
        sys.exit(EXIT_CONFIG)
    except SchemaError as exc:
        # The system lacks what the config names (a table, a column): fix the config.
        err.print(f"error: {redact(str(exc))} (see: crmsync check)", markup=False,
                  soft_wrap=True)
        sys.exit(EXIT_CONFIG)
    except (SystemUnavailable, StateUnavailable) as exc:
        err.print(f"error: {redact(str(exc))}", markup=False, soft_wrap=True)
        sys.exit(EXIT_UNREACHABLE)
    except CrmsyncError as exc:
        err.print(f"error: {redact(str(exc))}", markup=False, soft_wrap=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:
        # A bug, not the user's doing: one line (redacted), the traceback on request.
        if os.environ.get("CRMSYNC_DEBUG"):
            raise
        err.print(
            f"error: internal error: {type(exc).__name__}: {redact(str(exc))} "
            "(set CRMSYNC_DEBUG=1 to see where; please report it)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)
    finally:
        resume_gc(freeze=False)  # a caller in this process collects as before
