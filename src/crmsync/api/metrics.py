"""Prometheus metrics, computed from the state database at scrape time.

Queue depth and outcomes live in the shared state database, so any API
process reports the whole service, not only its own work. Each app has its
own registry so several apps (tests, one process) do not clash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.api")

STATUSES = ("pending", "running", "failed")


class StateCollector(Collector):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def describe(self) -> list[Metric]:
        # No query at registration time: families are only known at scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        depth = GaugeMetricFamily(
            "crmsync_queue_messages", "messages in the queue", labels=["link", "status"]
        )
        age = GaugeMetricFamily(
            "crmsync_queue_oldest_age_seconds",
            "age of the oldest waiting (pending or running) message",
            labels=["link"],
        )
        outcomes = CounterMetricFamily(
            "crmsync_outcomes", "logged record outcomes", labels=["link", "status"]
        )
        calls = CounterMetricFamily(
            "crmsync_connector_calls", "connector calls made by this process", labels=["system"]
        )
        try:
            with ctx.state.connect() as c:
                counts = ctx.state.queue_counts_by_link(c)
                oldest = ctx.state.oldest_waiting(c)
                done = ctx.state.outcome_counts(c)
        except Exception:
            log.warning("metrics: state database unreachable", extra={"action": "metrics"})
            counts, oldest, done = {}, {}, {}
        now = ctx.clock()
        for link in sorted(set(ctx.config.links) | set(counts)):
            per = counts.get(link, {})
            for st in STATUSES:
                depth.add_metric([link, st], per.get(st, 0))
            at = oldest.get(link)
            age.add_metric([link], max(0.0, (now - at).total_seconds()) if at else 0.0)
        for (link, st), n in sorted(done.items()):
            outcomes.add_metric([link, st], n)
        for name, conn in sorted(ctx.connectors.items()):
            calls.add_metric([name], conn.count_calls())
        yield from (depth, age, outcomes, calls)


def build_registry(ctx: ServiceContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx))
    return registry
