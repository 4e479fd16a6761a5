"""API budgets per system: calls per fixed window, counted in the state database.

Every connector call counts, whoever makes it: ``crmsync sync``, the scheduler,
every worker and the API measure the calls each thread made
(``Connector.thread_calls``, through a ``QuotaMeter``) and add them to the
system's counter for the current window, in the state database, so all
processes on all machines share one budget. Work for a system whose budget is
spent is not started (the engine checks before every migration page, capture
and queue batch): its messages stay queued (attempts unspent), a migration
keeps its page position, and both go on in the next window. A step already
started finishes, so a window can end a few calls over budget, never more than
one step's worth: a page, a batch or a capture. The first step of a run always
goes (it includes reading the systems' structure), so every run progresses.

Windows are fixed and aligned to the epoch (a 24h window resets at 00:00 UTC),
so every worker agrees on when one ends without talking to the others.

An optional rate (calls per second) is a shared leaky bucket kept in the same
table under ``<system>#rate``: its ``window_start`` column holds the bucket's
"theoretical arrival time" (when all calls spent so far are paid off at the
rate). Work may start while that time is less than one second ahead of now, so
bursts are capped at one second's worth and a batch that went over makes the
following work wait for exactly its excess: the average never exceeds the rate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from crmsync.config.models import Config, QuotaConfig
from crmsync.connectors.base import Connector
from crmsync.errors import CrmsyncError
from crmsync.state.store import StateStore

_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    system: str
    calls: int
    per: str
    used: int
    remaining: int
    resets_at: datetime
    rate: float | None = None
    # seconds until the rate allows the next batch (0: now)
    rate_wait_s: float = 0.0


    @property
    def spent(self) -> bool:
        """No more work now: the window's budget is used up, or the rate says wait."""
        return self.remaining <= 0 or self.rate_wait_s > 0

    def opens_at(self, now: datetime) -> datetime:
        """When work for the system may start again."""
        if self.remaining <= 0:
            return self.resets_at
        return now + timedelta(seconds=self.rate_wait_s)

    def describe(self) -> str:
        if self.remaining <= 0:
            return (
                f"quota of {self.system} spent until {self.resets_at:%Y-%m-%d %H:%M:%S} UTC "
                f"({self.used} of {self.calls} calls per {self.per} used)"
            )
        return (
            f"rate of {self.system} ({self.rate:g} calls/s) reached: "
            f"{self.rate_wait_s:.1f}s to wait"
        )


class QuotaWait(CrmsyncError):
    """A system's budget for this window is spent: the rest waits for the next one."""

    def __init__(self, status: QuotaStatus) -> None:
        super().__init__(f"{status.describe()}; the rest waits, nothing is lost")
        self.status = status


def window_start(now: datetime, window_s: int) -> datetime:
    n = int((now - _EPOCH).total_seconds()) // window_s
    return _EPOCH + timedelta(seconds=n * window_s)


class QuotaGuard:
    def __init__(self, config: Config, state: StateStore, clock: Callable[[], datetime]) -> None:
        self.state = state
        self.clock = clock
        self.quotas: dict[str, QuotaConfig] = {
            name: q for name, s in config.systems.items() if (q := getattr(s, "quota", None))
        }

    def _used(self, c: sa.Connection, system: str, start: datetime) -> int:
        row = self.state.quota_row(c, system)
        return int(row[1]) if row is not None and row[0] == start else 0

    def status(self, system: str) -> QuotaStatus | None:
        q = self.quotas.get(system)
        if q is None:
            return None
        now = self.clock()
        start = window_start(now, q.window_s)
        with self.state.connect() as c:
            used = self._used(c, system, start)
            wait = self._rate_wait(c, system, now) if q.rate else 0.0
        return QuotaStatus(
            system, q.calls, q.per, used, max(0, q.calls - used),
            start + timedelta(seconds=q.window_s), q.rate, wait,
        )

    def _rate_wait(self, c: sa.Connection, system: str, now: datetime) -> float:
        row = self.state.quota_row(c, _rate_key(system))
        if row is None:
            return 0.0
        return max(0.0, (row[0] - now).total_seconds() - 1.0)

    def all(self) -> list[QuotaStatus]:
        return [s for name in self.quotas if (s := self.status(name)) is not None]

    def exhausted(self, systems: Iterable[str]) -> str | None:
        """The first of ``systems`` whose budget is spent for this window, or None."""
        st = self.blocked(systems)
        return None if st is None else st.system

    def blocked(self, systems: Iterable[str]) -> QuotaStatus | None:
        """The status of the first of ``systems`` that allows no work now, or None."""
        for name in dict.fromkeys(systems):
            st = self.status(name)
            if st is not None and st.spent:
                return st
        return None

    def link_waits(
        self, config: Config, pending: Mapping[str, int]
    ) -> dict[str, tuple[int, datetime, str]]:
        """Per link held back by a quota: ``(pending messages, when it reopens, system)``."""
        now = self.clock()
        spent = {q.system: q for q in self.all() if q.spent}
        out: dict[str, tuple[int, datetime, str]] = {}
        for name, lc in config.links.items():
            held = [spent[s] for s in (lc.source_system, lc.target_system) if s in spent]
            if held:
                # The link needs every system it waits for: it goes on once the last opens.
                last = max(held, key=lambda q: q.opens_at(now))
                out[name] = (int(pending.get(name, 0)), last.opens_at(now), last.system)
        return out

    def spend(self, system: str, calls: int) -> None:
        """Add ``calls`` to the system's counter for the current window."""
        q = self.quotas.get(system)
        if q is None or calls <= 0:
            return
        start = window_start(self.clock(), q.window_s)
        self.state.add_quota_calls(system, start, calls)
        if q.rate:
            self._spend_rate(system, calls, q.rate)

    def _spend_rate(self, system: str, calls: int, rate: float) -> None:
        self.state.add_rate_calls(_rate_key(system), calls, rate, self.clock())


def _rate_key(system: str) -> str:
    return f"{system}#rate"


class QuotaMeter:
    """Counts every call a thread made through the connectors against the systems' budgets.

    Connectors count calls per thread; the meter remembers, per thread, how many
    it has already counted, and ``settle`` adds the rest to the state database.
    Calls made between two settles (a query made outside any run, the structure
    read at start-up) are never lost: the next settle in that thread counts them.
    """

    def __init__(self, guard: QuotaGuard, connectors: Mapping[str, Connector]) -> None:
        self.guard = guard
        self.connectors = connectors
        self._local = threading.local()
        # Calls made before the meter existed are the pre-run check's (the CLI hands
        # its described connectors to the engine): not counted, as when the check
        # had connectors of its own.
        self._local.counted = {n: c.thread_calls() for n, c in connectors.items()}

    def settle(self) -> None:
        counted: dict[str, int] = self._local.__dict__.setdefault("counted", {})
        for name in self.guard.quotas:
            conn = self.connectors.get(name)
            if conn is None:
                continue
            made = conn.thread_calls()
            new = made - counted.get(name, 0)
            if new > 0:
                self.guard.spend(name, new)
                counted[name] = made

    def blocked(self, systems: Iterable[str]) -> QuotaStatus | None:
        """Settle, then the first of ``systems`` that allows no work now (None: go)."""
        if not self.guard.quotas:
            return None
        self.settle()
        return self.guard.blocked(systems)
