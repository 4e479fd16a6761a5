"""Capture: the only producer of queue messages (capture -> queue -> apply).

Every message in the queue comes from one of these:

* ``Capture.poll`` reads one side of a link for changes since its cursor, page
  by page, and queues each page in the same state transaction that advances
  the cursor: a killed capture resumes at the page it was in, and a committed
  cursor never passes a change that was not queued. The first page reaches
  back ``lookback`` seconds (late commits with an older stamp); of that overlap,
  records whose pair already applied the same state (stamp and a digest of
  the values, ``applied_version``) are not queued again. Rows whose change
  stamp cannot be read (the connector holds them in its cursor) are logged as
  ``skipped`` in that same transaction, once per stamp.
* ``queue_records`` queues records named from outside, a webhook delivery or a
  sync request (API, ``sync --record``), in the caller's transaction, so they
  commit with the delivery row or the request's log rows.
* ``queue_failed`` queues a record whose write failed outside the queue (a
  migration scan page), as a failed attempt: it is retried through the retry
  policy like any failed message.

A message names a record, not its values: apply reads the record when it
runs, so pending changes to one record collapse into one message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crmsync.config.models import Config, LinkConfig
from crmsync.connectors.base import ChangePage, Connector, Cursor
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.tally import RunTally
from crmsync.model import Action, RecordRef, Side, applied_version
from crmsync.state.store import StateStore, utcnow

# gate(systems): counts the calls made so far; raises QuotaWait when one is spent.
Gate = Callable[[Iterable[str]], None]


def queue_records(
    state: StateStore,
    c: sa.Connection,
    link: str,
    side: Side | str,
    ids: Iterable[str],
    *,
    now: datetime | None = None,
) -> int:
    """Queue ``ids`` of one side of ``link`` in the caller's transaction; returns how many."""
    return state.enqueue(c, link, Side(side).value, [(i, "upsert", None) for i in ids], now=now)


def queue_failed(
    state: StateStore,
    c: sa.Connection,
    link: str,
    record_id: str,
    error: str,
    *,
    retry: RetryPolicy,
    now: datetime,
) -> None:
    """Queue a source record whose write failed outside the queue (a migration page).

    Due after the first back-off, like any failed message: not again in this
    run (a record fails, is counted and logged once per run).
    """
    state.add_failed(
        c,
        link,
        Side.SOURCE.value,
        record_id,
        error,
        max_attempts=retry.max_attempts,
        available_at=now + timedelta(seconds=retry.delay(1)),
    )


def links_reading(
    config: Config, enabled: Iterable[str], system: str, obj: str
) -> list[tuple[str, Side]]:
    """(link, side) of every link of ``enabled`` that reads ``system.obj``.

    Deletes need no op of their own: apply reads the record and finds it gone.
    """
    ref = f"{system}.{obj}"
    out = []
    for name in enabled:
        lc = config.links[name]
        if lc.source == ref:
            out.append((name, Side.SOURCE))
        if lc.target == ref and lc.reads_target:
            out.append((name, Side.TARGET))
    return out


def _system_object(lc: LinkConfig, side: Side) -> tuple[str, str]:
    if side is Side.SOURCE:
        return lc.source_system, lc.source_object
    return lc.target_system, lc.target_object


class Capture:
    """Polls the systems of one configuration for changes and queues them."""

    def __init__(self, config: Config, state: StateStore) -> None:
        self.config = config
        self.state = state

    def lookback(self, lc: LinkConfig, side: Side) -> float:
        sysname, objname = _system_object(lc, side)
        obj = self.config.systems[sysname].objects.get(objname)
        return float(getattr(obj, "lookback", 0.0)) if obj else 0.0

    def cursor(self, name: str, side: Side) -> Cursor | None:
        """The incremental cursor of one side of a link (None: from the start)."""
        with self.state.connect() as c:
            saved = self.state.get_cursor(c, name, side.value, "incremental")
        return saved.get("cursor") if saved else None

    def pages(
        self, lc: LinkConfig, conn: Connector, side: Side, cursor: Cursor | None
    ) -> Iterator[ChangePage]:
        """The pages of changes after ``cursor``; only the first reaches back."""
        obj = _system_object(lc, side)[1]
        lookback = self.lookback(lc, side)
        while True:
            page = conn.read_changes(obj, cursor, lc.batch_size, lookback)
            lookback = 0.0  # only the first page reaches back
            yield page
            cursor = page.cursor if page.cursor is not None else cursor
            if not page.more:
                break

    def place_cursors(
        self,
        c: sa.Connection,
        name: str,
        sides: Iterable[tuple[Side, Connector, str]],
        *,
        full: bool,
    ) -> None:
        """Position the incremental cursors at the high-water mark (before a
        migration scan reads anything, so nothing changed during it is missed);
        with ``full`` even those already placed."""
        for side, conn, obj in sides:
            if full or self.state.get_cursor(c, name, side.value, "incremental") is None:
                self.state.set_cursor(
                    c, name, side.value, "incremental", {"cursor": conn.start_cursor(obj)}
                )

    def poll(
        self,
        name: str,
        conn: Connector,
        side: Side,
        *,
        gate: Gate,
        counts: Counter[str],
        tally: RunTally,
        run_id: int | None = None,
    ) -> None:
        """Queue one side's changes since its cursor; ``counts`` gets ``captured``
        and ``skipped`` (unreadable stamps).

        Needs only the link's config and that side's system: changes keep being
        captured durably while the other system is down.
        """
        lc = self.config.links[name]
        system, obj = _system_object(lc, side)
        cursor = self.cursor(name, side)
        captured = 0
        # One budget check per capture, not per page: a capture stopped half-way
        # would re-read its lookback overlap on every resume and could never finish.
        gate((system,))
        overlap = self.lookback(lc, side) > 0
        for page in self.pages(lc, conn, side, cursor):
            records = page.records
            if overlap and records:
                # The first page reaches back over changes queued before: a record
                # whose pair applied this very state (stamp and values digest) is
                # not queued again.
                with self.state.connect() as c:
                    done = self.state.applied_versions(
                        c, name, side.value, [r.id for r in records]
                    )
                if done:
                    records = [r for r in records if done.get(r.id) != applied_version(r)]
            overlap = False  # only the first page reaches back
            fresh = [(r.id, "upsert", None if r.version is None else str(r.version))
                     for r in records]
            if page.check_known:
                fresh += [(rid, "upsert", None) for rid in self._gone(name, side, conn, obj)]
            unreadable = page.unreadable
            if unreadable and side is Side.SOURCE and tally.scanned:
                # This run's migration scan has just logged these records: once per run.
                met = tally.met(self.state, RecordRef.prefix(system, obj), list(unreadable))
                unreadable = {k: v for k, v in unreadable.items() if k not in met}
            with self.state.begin(durable=False) as c:  # lost: captured again
                self.state.enqueue(c, name, side.value, fresh)
                if unreadable:
                    # Reported in the same transaction as the cursor that passes them.
                    self.state.add_outcomes(
                        c, self._unreadable_rows(name, system, obj, side, unreadable, run_id)
                    )
                if page.cursor is not None:
                    self.state.set_cursor(
                        c, name, side.value, "incremental", {"cursor": page.cursor}
                    )
            captured += len(fresh)
            counts["skipped"] += len(unreadable)
        counts["captured"] += captured

    def _unreadable_rows(
        self,
        name: str,
        system: str,
        obj: str,
        side: Side,
        unreadable: dict[str, str],
        run_id: int | None,
    ) -> list[dict[str, Any]]:
        """Log rows (status skipped) for rows whose updated_at cannot be read."""
        at = self.state.ts(utcnow())
        rows = []
        for rid, why in unreadable.items():
            ref = str(RecordRef(system, obj, rid))
            rows.append(
                {
                    "run_id": run_id,
                    "link": name,
                    "source_ref": ref if side is Side.SOURCE else None,
                    "target_ref": ref if side is Side.TARGET else None,
                    "action": Action.SKIPPED.value,
                    "status": "skipped",
                    "fields": "[]",
                    "message": why,
                    "at": at,
                }
            )
        return rows

    def _gone(self, name: str, side: Side, conn: Connector, obj: str) -> list[str]:
        """Paired records of this side that no longer exist: queued, apply sees them gone."""
        with self.state.connect() as c:
            ids = self.state.live_ids(c, name, side.value)
        gone: list[str] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            have = conn.existing(obj, chunk)
            gone.extend(rid for rid in chunk if rid not in have)
        return gone
