# Over 500 lines: one story (server, seed, sync, edit, read back), read top to bottom.
"""The Tryton demo: a sample ERP (SQLite) mirrored into a real Tryton CRM by the real CLI.

Run ``python -m crmsync.demo.tryton`` in a folder of its own (``make
demo-tryton`` uses ``demo-tryton/``). It builds a Tryton database with
``trytond-admin`` (admin password from a generated file, never shown) and
bootstraps it over JSON-RPC, once: later runs copy that template. Each run then
starts ``trytond`` on a free loopback port, seeds the ERP and a few Tryton
companies that already carry a customer number in their party ``code``, writes
``crmsync.yaml``, runs ``check``, ``plan`` and ``sync``, edits the ERP, syncs
again, prints what Tryton now holds (read back over RPC) and stops trytond,
also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import secrets
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from crmsync.connectors.tryton import TrytonRPC
from crmsync.demo.sqlite import apply_common_edits, build_erp, fmt_ts, run_cli, utcnow
from crmsync.errors import CrmsyncError
from crmsync.testing.tryton import (
    DATABASE,
    TrytonProcess,
    build_template,
    compact,
    find_venv,
    installed_version,
    read_password,
    template_ids,
)

ERP_DB = "erp.db"
STATE_DB = "crmsync.db"
CONFIG = "crmsync.yaml"
PASSWORD_FILE = "admin-password"  # 0600; trytond-admin reads it as TRYTONPASSFILE
PASSWORD_VARIABLE = "TRYTON_PASSWORD"  # how crmsync.yaml gets it: ${TRYTON_PASSWORD}
TRYTON_DIR = "tryton"  # the run's copy of the template database
TRYTON_LOG = "trytond.log"
PID_FILE = "trytond.pid"  # lets the next run stop a trytond an earlier one left behind
DEFAULT_CUSTOMERS = 400
DEFAULT_SEED = 42
ALREADY_IN_TRYTON = 40  # active customers Tryton already holds, under stale names
INACTIVE_IN_TRYTON = 5  # customers without an active contract that Tryton holds too
PROSPECTS = 8  # Tryton companies the ERP does not know
LOG_LINES = 40

CONFIG_TEXT = """\
# crmsync demo on a real Tryton: mirror active ERP customers into Tryton companies.
state: sqlite:///crmsync.db
systems:
  erp:
    connector: sql
    url: sqlite:///erp.db
    links_to: "https://erp.example/customers/{{id}}"
    objects:
      customer:
        table: customers
        key: customer_no
        updated_at: changed_at
        deleted: {{field: status, value: X}}   # status X: deleted in the ERP
  crm:
    connector: tryton
    url: {url}
    database: {database}
    user: admin
    password: ${{{password_variable}}}          # from the environment, never stored
    # The Tryton desktop client opens tryton:// links (valid while this trytond runs).
    links_to: "tryton://127.0.0.1:{port}/{database}/model/party.party/{{id}}"
    objects:
      company: {{}}                           # party.party with the category Company
links:
  customers:
    source: erp.customer
    target: crm.company
    direction: forward
    match: {{customer_no: code}}              # pairs parties that carry the number
    filter:
      all:
        - {{field: contract_status, op: eq, value: active}}
    fields:
      - {{source: name, target: name}}
      - {{source: email, target: email}}
      - {{source: city, target: city}}
      - {{source: phone, target: phone}}
    on_delete: {{set: {{active: false}}}}     # archive the party
"""

_NEW_PLACES = ("Bergen", "Tampere", "Ghent", "Porto", "Graz")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every ``finally`` stops trytond."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _db(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that commits on success and is always closed."""
    db = sqlite3.connect(str(path))
    try:
        with db:
            yield db
    finally:
        db.close()


def password_file(folder: Path) -> tuple[Path, bool]:
    """The admin password file, generated (0600) when missing; True when new."""
    path = folder / PASSWORD_FILE
    if path.exists():
        return path, False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(24) + "\n")
    return path, True


def template(
    folder: Path, venv: Path, passfile: Path, console: Console
) -> tuple[Path, dict[str, int]]:
    """The bootstrapped database, built once per Tryton version and password.

    The directory name carries both, so a new password or Tryton release
    builds a new template; older ones are removed.
    """
    pw_key = hashlib.sha256(read_password(passfile).encode()).hexdigest()[:8]
    target = folder / f"template-{installed_version(venv)}-{pw_key}"
    for old in folder.glob("template-*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    ids = template_ids(target)
    if ids is not None:
        console.print(f"reusing the Tryton database template in {target.name}/", soft_wrap=True)
        return target, ids
    console.print(
        "building the Tryton database: trytond-admin activates party, company, "
        "sale_opportunity and party_relationship, then an RPC bootstrap adds currency, "
        "company, employee and the party categories (once, about 20 s)...",
        soft_wrap=True,
    )
    started = time.monotonic()
    ids = build_template(target, passfile, venv=venv)
    console.print(f"[dim]built in {time.monotonic() - started:.1f} s[/dim]")
    return target, ids


def stop_leftover(folder: Path, console: Console) -> None:
    """Stop a trytond an earlier run of this demo left behind (killed with SIGKILL).

    Only a process that is trytond and works in this folder's database directory
    is signalled, so a recycled PID is never hit."""
    pid_path = folder / PID_FILE
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        pid_path.unlink(missing_ok=True)
        return
    proc = Path(f"/proc/{pid}")
    try:
        ours = (
            b"trytond" in (proc / "cmdline").read_bytes()
            and (proc / "cwd").resolve() == (folder / TRYTON_DIR).resolve()
        )
    except OSError:
        ours = False
    if ours:
        console.print(f"stopping trytond (pid {pid}) left by an earlier run")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proc.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    pid_path.unlink(missing_ok=True)


def reset(folder: Path) -> None:
    """Remove what an earlier run left (the template stays), so every run starts fresh."""
    for name in (ERP_DB, STATE_DB, CONFIG, TRYTON_LOG):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (folder / (name + suffix)).unlink(missing_ok=True)
    shutil.rmtree(folder / TRYTON_DIR, ignore_errors=True)


def write_config(path: Path, server: TrytonProcess) -> str:
    """Write ``crmsync.yaml`` for this run's trytond; returns its text."""
    text = CONFIG_TEXT.format(
        url=server.url, port=server.port, database=server.database,
        password_variable=PASSWORD_VARIABLE,
    )  # fmt: skip
    path.write_text(text, encoding="utf-8")
    return text


@dataclass
class Seeds:
    """What the demo put where, so the summary can tell matches from creates."""

    in_tryton: dict[str, int] = field(default_factory=dict)  # customer_no -> party id
    prospects: list[int] = field(default_factory=list)
    edits: dict[str, list[str]] = field(default_factory=dict)


def seed_tryton(rpc: TrytonRPC, erp: Path, category: int, seed: int) -> Seeds:
    """Companies Tryton holds before crmsync runs: stale copies of some ERP customers
    (customer number in ``code``, which Tryton refuses to change after a create, so
    it is given here) and prospects the ERP does not know. One create call."""
    rng = random.Random(seed + 11)
    with _db(erp) as db:
        active = db.execute(
            "SELECT customer_no, name, email, city FROM customers "
            "WHERE contract_status = 'active' ORDER BY customer_no"
        ).fetchall()
        inactive = db.execute(
            "SELECT customer_no, name, email, city FROM customers "
            "WHERE contract_status != 'active' ORDER BY customer_no"
        ).fetchall()
    picked = sorted(rng.sample(active, min(ALREADY_IN_TRYTON, len(active))))
    picked += sorted(rng.sample(inactive, min(INACTIVE_IN_TRYTON, len(inactive))))
    vlist: list[dict[str, Any]] = []
    for no, name, email, city in picked:
        values: dict[str, Any] = {
            "name": f"{name.rsplit(' ', 1)[0]} (old)",
            "code": no,
            "categories": [["add", [category]]],
            "addresses": [["create", [{"city": city}]]],
        }
        if rng.random() < 0.7:
            values["contact_mechanisms"] = [["create", [{"type": "email", "value": email}]]]
        vlist.append(values)
    for j in range(1, PROSPECTS + 1):
        vlist.append({
            "name": f"Prospect {j} Ltd",
            "categories": [["add", [category]]],
            "contact_mechanisms": [
                ["create", [{"type": "email", "value": f"hello@prospect{j}.example"}]]
            ],
        })
    ids = rpc.call("model.party.party.create", vlist)
    return Seeds(
        in_tryton={row[0]: int(i) for row, i in zip(picked, ids, strict=False)},
        prospects=[int(i) for i in ids[len(picked):]],
    )


def edit_erp(path: Path, seeds: Seeds, seed: int) -> dict[str, list[str]]:
    """Change the ERP after the first sync; returns the customer numbers per kind."""
    rng = random.Random(seed + 12)
    now = fmt_ts(utcnow())
    with _db(path) as db:
        active = [r[0] for r in db.execute(
            "SELECT customer_no FROM customers WHERE contract_status = 'active' "
            "AND status != 'X' ORDER BY customer_no"
        )]  # fmt: skip
        inactive = [r[0] for r in db.execute(
            "SELECT customer_no FROM customers WHERE contract_status != 'active' "
            "AND status != 'X' ORDER BY customer_no"
        )]  # fmt: skip
        picked = rng.sample(active, 10)
        known_inactive = sorted(c for c in inactive if c in seeds.in_tryton)
        unknown_inactive = [c for c in inactive if c not in seeds.in_tryton]
        edits = {
            "renamed": sorted(picked[:5]),
            "moved": sorted(picked[5:8]),
            "deleted": sorted(picked[8:10]),
            # One Tryton already holds (matched), two it does not (created).
            "activated": sorted(known_inactive[:1] + rng.sample(unknown_inactive, 2)),
        }
        db.executemany(
            "UPDATE customers SET city = ?, email = ?, changed_at = ? WHERE customer_no = ?",
            [(rng.choice(_NEW_PLACES), f"office@{c.lower()}.moved.example", now, c)
             for c in edits["moved"]],
        )  # fmt: skip
        apply_common_edits(db, edits, now)
    return edits


def _parties(rpc: TrytonRPC, category: int) -> list[dict[str, Any]]:
    return list(rpc.call(
        "model.party.party.search_read",
        [["categories", "in", [category]], ["active", "in", [True, False]]],
        0, None, [["id", "ASC"]], ["name", "code", "active", "email", "phone", "addresses"],
    ))  # fmt: skip


def _notes(rpc: TrytonRPC, party: int | None = None) -> list[dict[str, Any]]:
    dom: list[Any] = [["message", "like", "Sync %"]]
    dom.append(
        ["resource", "=", f"party.party,{party}"] if party is not None
        else ["resource", "like", "party.party,%"]
    )
    return list(rpc.call(
        "model.ir.note.search_read", dom, 0, None, [["id", "ASC"]],
        ["message", "create_date", "resource"],
    ))  # fmt: skip


def summary(
    console: Console, rpc: TrytonRPC, erp: Path, seeds: Seeds, category: int
) -> tuple[str, int]:
    """Print what Tryton holds now, read back over RPC; returns the highlighted
    customer number and its party id."""
    parties = _parties(rpc, category)
    with _db(erp) as db:
        erp_rows = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT customer_no, name, email, city, phone, contract_status, status "
                "FROM customers"
            )
        }
    wanted = {c for c, r in erp_rows.items() if r[4] == "active" and r[5] != "X"}
    by_code = {p["code"]: p for p in parties if p.get("code") in erp_rows}
    live = {c for c, p in by_code.items() if p["active"]}
    matched = [c for c in live if c in seeds.in_tryton and c in wanted]
    created = [c for c in live if c not in seeds.in_tryton]
    archived = [c for c, p in by_code.items() if not p["active"]]
    stale = [c for c in seeds.in_tryton if c not in wanted and by_code[c]["name"].endswith("(old)")]
    renamed = sum(by_code[c]["name"] == erp_rows[c][0] for c in seeds.edits["renamed"])
    notes = _notes(rpc)
    rows = [
        ("ERP customers with an active contract (not deleted)", len(wanted)),
        (f"Tryton companies before crmsync (with a customer number: {len(seeds.in_tryton)})",
         len(seeds.in_tryton) + len(seeds.prospects)),
        ("Tryton companies now", len(parties)),
        ("  matched: already there, found by code, overwritten with ERP values", len(matched)),
        ("  created by crmsync (code = customer number)", len(created)),
        ("  archived after an ERP delete", len(archived)),
        ("  left alone: no active contract, or unknown to the ERP",
         len(stale) + len(seeds.prospects)),
        ("active ERP customers missing in Tryton", len(wanted - live)),
        (f"ERP renames visible in Tryton (of {len(seeds.edits['renamed'])})", renamed),
        ("timeline notes (ir.note) crmsync wrote on companies", len(notes)),
    ]  # fmt: skip
    table = Table(title="Summary (read back from Tryton over JSON-RPC)")
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, n in rows:
        table.add_row(what, str(n))
    console.print(table)

    # One record in detail: a customer that moved, and was in Tryton before crmsync.
    moved = seeds.edits["moved"]
    no = next((c for c in moved if c in seeds.in_tryton), moved[0])
    party = by_code[no]
    city = None
    if party["addresses"]:
        [addr] = rpc.call("model.party.address.read", party["addresses"][:1], ["city"])
        city = addr["city"]
    name, email, erp_city = erp_rows[no][0], erp_rows[no][1], erp_rows[no][2]
    detail = Table(title=f"erp.customer:{no} and its Tryton company (party.party,{party['id']})")
    for col in ("field", "ERP", "Tryton"):
        detail.add_column(col)
    detail.add_row("name", name, party["name"])
    detail.add_row("code", no, party["code"])
    detail.add_row("email", email or "", party["email"] or "")
    detail.add_row("city", erp_city or "", city or "")
    console.print(detail)
    timeline = Table(title=f"ir.note on party.party,{party['id']} (the timeline crmsync wrote)",
                     show_lines=True)  # fmt: skip
    timeline.add_column("created (UTC)")
    timeline.add_column("message", overflow="fold")
    for n in _notes(rpc, int(party["id"])):
        timeline.add_row(str(n["create_date"])[:19], n["message"])
    console.print(timeline)
    return no, int(party["id"])


def run_steps(console: Console, steps: Sequence[tuple[str, list[str], int | None]]) -> None:
    for title, cli_args, limit in steps:
        console.rule(f"[bold]{title}")
        if (rc := run_cli(console, cli_args, limit)) != 0:
            raise DemoFailed(f"crmsync {' '.join(cli_args)} failed (exit {rc})")


class DemoFailed(Exception):
    """A step failed; the message says which."""


def demo(folder: Path, venv: Path, customers: int, seed: int, console: Console) -> None:
    """Every step, with trytond stopped on the way out whatever happens."""
    t0 = time.monotonic()
    no, party = "", 0
    stop_leftover(folder, console)
    reset(folder)
    console.rule("[bold]1. Tryton")
    passfile, new = password_file(folder)
    console.print(
        f"admin password: {'generated into' if new else 'read from'} {passfile.name} "
        "(mode 0600, never shown)"
    )
    tdir, ids = template(folder, venv, passfile, console)
    (folder / TRYTON_DIR).mkdir()
    shutil.copyfile(tdir / f"{DATABASE}.sqlite", folder / TRYTON_DIR / f"{DATABASE}.sqlite")
    server = TrytonProcess(
        db_dir=folder / TRYTON_DIR, log_path=folder / TRYTON_LOG,
        password=read_password(passfile), venv=venv, own_session=True,
    )  # fmt: skip
    try:
        server.start()
        (folder / PID_FILE).write_text(f"{server.pid}\n")
        console.print(
            f"trytond (pid {server.pid}) answers at {server.url}, database "
            f"{server.database!r}, in {server.start_seconds:.1f} s; log in {TRYTON_LOG}"
        )
        rpc = server.rpc()
        category = ids["category_company_id"]

        console.rule("[bold]2. Sample data")
        n = build_erp(folder / ERP_DB, customers, seed)
        seeds = seed_tryton(rpc, folder / ERP_DB, category, seed)
        text = write_config(folder / CONFIG, server)
        with _db(folder / ERP_DB) as db:
            (active,) = db.execute(
                "SELECT count(*) FROM customers WHERE contract_status = 'active'"
            ).fetchone()
        console.print(
            f"{ERP_DB}: {n} customers, {active} with an active contract\n"
            f"Tryton: {len(seeds.in_tryton)} companies carrying a customer number in `code` "
            f"(stale names; {INACTIVE_IN_TRYTON} of them without an active contract), "
            f"{len(seeds.prospects)} prospects the ERP does not know\n"
            f"{CONFIG}: written; {PASSWORD_VARIABLE} is set in the environment of the CLI",
            soft_wrap=True,
        )
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        os.environ[PASSWORD_VARIABLE] = server.password

        run_steps(console, [
            ("3. Validate the config and the live systems", ["check"], None),
            ("4. Dry run: what the first sync would do", ["plan"], LOG_LINES),
            ("5. First sync: the initial migration", ["sync"], None),
        ])  # fmt: skip

        console.rule("[bold]6. Changes in the ERP")
        seeds.edits = edit_erp(folder / ERP_DB, seeds, seed)
        e = seeds.edits
        console.print(
            f"renamed {', '.join(e['renamed'])}; moved (new city and email) "
            f"{', '.join(e['moved'])}; deleted (status X) {', '.join(e['deleted'])}; "
            f"gave an active contract to {', '.join(e['activated'])}",
            soft_wrap=True,
        )
        run_steps(console, [("7. Incremental sync", ["sync"], None)])

        console.rule("[bold]8. Result")
        no, party = summary(console, rpc, folder / ERP_DB, seeds, category)
        run_steps(console, [
            ("9. Deep links of one record", ["open", f"erp.customer:{no}"], None),
        ])  # fmt: skip
    finally:
        pid = server.pid
        server.close()
        (folder / PID_FILE).unlink(missing_ok=True)
        if pid is not None:
            console.print(f"stopped trytond (pid {pid}, SIGTERM)")
            # One self-contained file to explore or copy (SIGTERM leaves the WAL beside it).
            with contextlib.suppress(sqlite3.Error):
                compact(server.db_path)
    cli = Path(sys.executable).parent / "crmsync"
    console.print(
        f"[dim]done in {time.monotonic() - t0:.1f} s.[/dim] Explore further in {folder} "
        f"(the CLI reads crmsync's state, trytond need not run):\n"
        f'  export {PASSWORD_VARIABLE}="$(cat {PASSWORD_FILE})"   # the config wants it\n'
        f"  {cli} log --record crm.company:{party}   # the timeline, as in Tryton's notes\n"
        f"  {cli} log --record erp.customer:{no}\n"
        f"The Tryton database is {TRYTON_DIR}/{DATABASE}.sqlite.",
        soft_wrap=True,
        highlight=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crmsync.demo.tryton", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS,
                        help="number of ERP customers (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--tryton-venv", type=Path, default=None,
                        help="the virtualenv with trytond (default: the checkout's .venv-tryton)")
    args = parser.parse_args(argv)
    if args.customers < 200:
        parser.error("--customers must be at least 200")
    console = Console()
    try:
        venv = (args.tryton_venv or find_venv()).resolve()
        if not (venv / "bin" / "trytond").exists():
            raise FileNotFoundError(f"no trytond in {venv}; run `make install-tryton`")
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}", soft_wrap=True)
        return 2
    # A SIGTERM or a closed terminal unwinds like Ctrl-C, so trytond is stopped
    # (unless the signal is ignored, as under nohup).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    try:
        demo(Path.cwd(), venv, args.customers, args.seed, console)
    except KeyboardInterrupt as exc:
        console.print(f"[yellow]interrupted ({exc or 'Ctrl-C'})")
        return 130
    except (DemoFailed, CrmsyncError, RuntimeError, OSError) as exc:
        console.print(f"demo failed: {exc}", style="red", soft_wrap=True, markup=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
