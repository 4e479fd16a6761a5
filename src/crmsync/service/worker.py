"""The worker: drains every enabled link's queue, forever, one batch at a time.

Any number of workers may run against one state database (on PostgreSQL they
claim with ``FOR UPDATE SKIP LOCKED``); each claim is a lease, so a worker that
dies leaves its messages to the others once the lease ends (at once, for a
dead process on the same machine).

A link whose system cannot be reached is paused: its messages go back to the
queue without spending attempts, and the worker probes it again after a
backoff that doubles up to a cap; when the system answers, delivery resumes
in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from crmsync.engine.apply import Applier
from crmsync.engine.lease import local_owner_gone
from crmsync.engine.runner import LinkReport
from crmsync.errors import SystemUnavailable
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.worker")


@dataclass(slots=True)
class Pause:
    until: float
    delay: float


class Worker:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        poll_s: float = 0.2,
        recover_every_s: float = 5.0,
        probe_initial_s: float = 1.0,
        probe_cap_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.poll_s = poll_s
        self.recover_every_s = recover_every_s
        self.probe_initial_s = probe_initial_s
        self.probe_cap_s = probe_cap_s
        self.monotonic = monotonic
        self.appliers: dict[str, Applier] = {}
        self.paused: dict[str, Pause] = {}
        # links waiting for a quota window: link -> the spent system
        self.quota_waiting: dict[str, str] = {}
        self.processed = 0
        self._last_recover = 0.0

    def links(self) -> list[str]:
        return self.ctx.engine.link_names()

    def recover(self) -> int:
        with self.ctx.state.begin() as c:
            return self.ctx.state.recover_running(
                c, now=self.ctx.clock(), owner_gone=local_owner_gone
            )

    def run_once(self) -> int:
        """One pass over the links: at most one batch each. Returns messages handled."""
        now = self.monotonic()
        if now - self._last_recover >= self.recover_every_s:
            self._last_recover = now
            if n := self.recover():
                log.info("recovered messages", extra={"action": "recover", "count": n})
        engine = self.ctx.engine
        total = 0
        for name in self.links():
            pause = self.paused.get(name)
            if pause is not None and now < pause.until:
                continue
            lc = self.ctx.config.links[name]
            systems = (lc.source_system, lc.target_system)
            # Counts this thread's calls so far, then asks the shared budget.
            if (spent := engine.meter.blocked(systems)) is not None:
                # The budget is spent: messages stay queued for the next window.
                self.quota_waiting[name] = spent.system
                continue
            self.quota_waiting.pop(name, None)
            try:
                applier = self.appliers.get(name)
                if applier is None:
                    applier = self.appliers[name] = engine.applier(name)
                n = engine.drain_batch(engine.compiled(name), applier, LinkReport(name, "worker"))
            except SystemUnavailable as exc:
                delay = min(self.probe_cap_s, pause.delay * 2 if pause else self.probe_initial_s)
                self.paused[name] = Pause(now + delay, delay)
                log.warning(
                    "system unreachable: link paused",
                    extra={"action": "pause", "link": name, "retry_in_s": delay,
                           "error": exc.user_message},
                )
                continue
            except Exception:
                # The batch went back to the queue with an attempt spent; keep serving
                # the other links instead of dying on one record's bug.
                log.exception("batch failed", extra={"action": "batch_failed", "link": name})
                continue
            finally:
                engine.settle_quota()  # every call of the batch, failed or not
            if pause is not None:
                if n == 0:
                    # Nothing was due, so nothing reached the system: no proof it
                    # answers. Stay paused; look again after the same delay.
                    self.paused[name] = Pause(now + pause.delay, pause.delay)
                    continue
                del self.paused[name]
                log.info("system answers again", extra={"action": "resume", "link": name})
            total += n
        if self.ctx.config.rules:
            total += self._rules(now)
        self.processed += total
        return total

    def _rules(self, now: float) -> int:
        """One batch of each enabled rule (evaluations and due actions)."""
        engine = self.ctx.engine
        runner = engine.rules
        total = 0
        for name in runner.enabled():
            key = f"rule:{name}"
            pause = self.paused.get(key)
            if pause is not None and now < pause.until:
                continue
            if engine.meter.blocked({self.ctx.config.rules[name].system}) is not None:
                continue  # the budget is spent: the rule's messages wait
            try:
                n = runner.service_batch(name)
            except SystemUnavailable as exc:
                delay = min(self.probe_cap_s, pause.delay * 2 if pause else self.probe_initial_s)
                self.paused[key] = Pause(now + delay, delay)
                log.warning("system unreachable: rule paused",
                            extra={"action": "pause", "rule": name, "retry_in_s": delay,
                                   "error": exc.user_message})
                continue
            except Exception:
                log.exception("rule batch failed", extra={"action": "batch_failed", "rule": name})
                continue
            finally:
                engine.settle_quota()
            self.paused.pop(key, None)
            total += n
        return total

    def run(self, stop: threading.Event) -> None:
        log.info("worker started", extra={"action": "start", "worker": self.ctx.engine.worker_id})
        wake = self.ctx.wake
        while not stop.is_set():
            if self.run_once() == 0:
                # Queued work in this process wakes us; other processes' work
                # (and timed retries) is found at the next poll.
                wake.wait(self.poll_s)
                wake.clear()
        log.info("worker stopped", extra={"action": "stop", "processed": self.processed})
