"""crmsync service benchmark: prints one `name: value` line per figure.

Webhook to target (the embedded default: SQLite state, SQLite target, `crmsync
serve` as a real process on a free loopback port). A push-only system
(`connector: webhook`) is linked to a SQLite table; signed deliveries go out at
a steady rate, each one record change (about half new ids, half updates), and
a watcher thread polls the target every few ms for rows written since its
last poll (a trigger logs every write with an autoincrement number).

* webhook_deliveries      how many were sent (rate x seconds)
* webhook_rate_per_s      deliveries per second actually sent
* webhook_p50_ms / _p99_ms / _max_ms
                          send -> the record shows that change (or a newer
                          one of the same record) in the target database
* webhook_ack_p50_ms / _p99_ms
                          send -> the 202 answer (the receiver's commit)
* webhook_coalesced       changes overtaken by a newer one of the same record
                          before they were applied (the queue keeps one
                          message per record); counted as delivered
* webhook_lost            accepted changes not in the target after the drain
                          time (must be 0)
* webhook_refused         non-2xx answers and requests with no answer
                          (then also _by_status, 0 = no answer, and the errors)
* webhook_resent_after_reset
                          deliveries sent again, once, because the server had
                          closed the idle keep-alive connection they went out on
* webhook_worker_poll_ms  how long an idle worker waits before looking again
                          (work queued in the serving process wakes it at once)
* webhook_500_*           the same figures at 500 deliveries a second
                          (--webhook-high-rate; 0 skips it)

Workers (PostgreSQL state, PostgreSQL target behind a loopback proxy that
adds a fixed latency to every round trip). MESSAGES records change once each
and are queued while the link is switched off; then N `crmsync worker`
processes are started, the link is switched on, and the time until the queue
is empty is taken. Every record is then checked at its newest value.

* workers_1_msgs_per_s, workers_4_msgs_per_s, workers_speedup
  (workers_messages, _latency_ms and _batch_size are the settings used)

Usage: python bench/service.py [--webhook-seconds 30] [--webhook-rate 200] [--webhook-high-rate 500]
       [--messages 20000] [--latency-ms 20] [--skip-webhook] [--skip-workers]
"""

from __future__ import annotations

import argparse
import base64
import bisect
import http.client
import inspect
import json
import math
import os
import queue
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from standardwebhooks import Webhook

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CRMSYNC = [sys.executable, "-m", "crmsync"]


def emit(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not values:
        return float("nan")
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


def stop_process(p: subprocess.Popen[Any], timeout: float = 30) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


# == webhook -> target ==========================================================

WEBHOOK_CONFIG = """\
state: sqlite:///{dir}/state.db
systems:
  esign:
    connector: webhook
    webhook_secret: ${{BENCH_WEBHOOK_SECRET}}
    objects:
      document:
        fields: {{note: string, seq: integer}}
  crm:
    connector: sql
    url: sqlite:///{dir}/crm.db
    objects:
      deal: {{table: deal, key: id, updated_at: updated_at}}
links:
  contracts:
    source: esign.document
    target: crm.deal
    match: {{id: ref}}
    fields:
      - {{source: note, target: note}}
      - {{source: seq, target: seq}}
"""


def build_webhook_target(d: Path) -> None:
    with sqlite3.connect(d / "crm.db") as c:
        # WAL: the watcher's 5 ms reads must never hold up the engine's writes
        # (in rollback-journal mode a reader blocks the writer's commit).
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(
            "CREATE TABLE deal (id INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT UNIQUE,"
            " note TEXT, seq INTEGER, updated_at DATETIME)"
        )
        # Every write the target receives, numbered in commit order (SQLite has
        # one writer at a time), so a poll reads only what is new since the last.
        c.execute("CREATE TABLE written (n INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT, seq INT)")
        for event in ("INSERT", "UPDATE"):
            c.execute(
                f"CREATE TRIGGER deal_{event.lower()} AFTER {event} ON deal BEGIN"
                " INSERT INTO written (ref, seq) VALUES (NEW.ref, NEW.seq); END"
            )


class Watcher(threading.Thread):
    """Polls the target for new writes; keeps per record (seq, first time seen)."""

    def __init__(self, db: Path, interval: float) -> None:
        super().__init__(name="watcher", daemon=True)
        self.db = db
        self.interval = interval
        self.seen: dict[str, list[tuple[int, float]]] = {}
        self.high: dict[str, int] = {}  # newest seq seen per record
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
        last = 0
        nxt = time.perf_counter()
        while not self.stop.is_set():
            # Taken before the read: every row it returns was committed by then.
            t = time.perf_counter()
            rows = conn.execute(
                "SELECT n, ref, seq FROM written WHERE n > ? ORDER BY n", (last,)
            ).fetchall()
            if rows:
                last = rows[-1][0]
                with self.lock:
                    for _, ref, seq in rows:
                        if seq is not None and seq > self.high.get(ref, -1):
                            self.high[ref] = seq
                            self.seen.setdefault(ref, []).append((seq, t))
            # a fixed cadence; after a slow read, carry on from now (no burst)
            nxt = max(nxt + self.interval, time.perf_counter())
            time.sleep(max(0.0, nxt - time.perf_counter()))
        conn.close()

    def visible(self, ref: str, seq: int) -> float | None:
        """When the record first showed this change or a newer one (None: not yet)."""
        with self.lock:
            hist = self.seen.get(ref)
            if not hist:
                return None
            i = bisect.bisect_left(hist, (seq, float("-inf")))
            return hist[i][1] if i < len(hist) else None

    def reached(self, ref: str, seq: int) -> bool:
        with self.lock:
            return self.high.get(ref, -1) >= seq


class Sender:
    """Signed deliveries over keep-alive connections, one per pool thread."""

    def __init__(self, port: int, secret: str, n: int) -> None:
        self.port = port
        self.hook = Webhook(secret)
        self.local = threading.local()
        self.sent = [0.0] * n
        self.acked = [0.0] * n
        self.status = [0] * n  # 0: no answer
        self.errors: dict[str, int] = {}  # no answer, by exception
        self.resent = 0  # sent again after a reset of an idle keep-alive connection

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.conn = conn
        return conn

    def send(self, i: int, body: str) -> None:
        wid = f"bench_{i}"
        now = datetime.now(UTC)
        headers = {
            "webhook-id": wid,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.hook.sign(wid, now, body),
            "content-type": "application/json",
        }
        self.sent[i] = time.perf_counter()
        for attempt in (1, 2):
            reused = getattr(self.local, "conn", None) is not None
            try:
                conn = self._conn()
                conn.request("POST", "/hooks/esign", body=body.encode(), headers=headers)
                resp = conn.getresponse()
                resp.read()
                self.acked[i] = time.perf_counter()
                self.status[i] = resp.status
                return
            except (OSError, http.client.HTTPException) as exc:
                conn = getattr(self.local, "conn", None)
                if conn is not None:
                    conn.close()
                self.local.conn = None
                # The server closes keep-alive connections idle for 5 s; a pool
                # thread that sat idle finds its connection reset before the
                # request was read. Like any HTTP client (and webhook sender),
                # send again once on a new connection; the time still counts
                # from the first try. Counted, so it shows in the figures.
                if attempt == 1 and reused and isinstance(
                    exc, (ConnectionError, http.client.RemoteDisconnected)
                ):
                    self.resent += 1
                    continue
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                return


def wait_health(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"crmsync serve exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("crmsync serve did not come up")
        time.sleep(0.1)


def webhook_bench(a: argparse.Namespace, root: Path, rate: float, prefix: str) -> None:
    from crmsync.service.worker import Worker

    d = root / prefix
    d.mkdir()
    build_webhook_target(d)
    (d / "crmsync.yaml").write_text(WEBHOOK_CONFIG.format(dir=d))
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    port = free_port()
    log = d / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CRMSYNC, "serve", "-c", str(d / "crmsync.yaml"), "--port", str(port)],
            cwd=d, env={**os.environ, "BENCH_WEBHOOK_SECRET": secret},
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_health(port, proc, log)
        n = round(rate * a.webhook_seconds)
        rng = random.Random(7)
        refs: list[str] = []
        ids: list[str] = []
        bodies: list[str] = []
        for i in range(n):
            if not ids or rng.random() < 0.5:
                ids.append(f"D{len(ids):07d}")
                ref, op = ids[-1], "created"
            else:
                ref, op = rng.choice(ids), "updated"
            refs.append(ref)
            # version = seq: deliveries racing on the pool cannot make a record go back
            bodies.append(json.dumps({
                "object": "document", "id": ref, "op": op, "version": i,
                "values": {"note": f"change {i}", "seq": i},
            }))
        sender = Sender(port, secret, n + 1)
        watcher = Watcher(d / "crm.db", a.poll_ms / 1000)
        watcher.start()
        # One delivery first, untimed: the worker reflects the target on its
        # first batch, a one-off that is not the steady state measured here.
        warm = json.dumps({"object": "document", "id": "warm-up", "op": "created",
                           "values": {"note": "warm-up", "seq": n}})
        sender.send(n, warm)
        deadline = time.perf_counter() + 30
        while not watcher.reached("warm-up", n):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the warm-up delivery never arrived; see {log}")
            time.sleep(0.01)
        # Enough threads that a slow answer never holds up the next send.
        with ThreadPoolExecutor(max_workers=16) as pool:
            t0 = time.perf_counter()
            for i in range(n):
                # absolute deadlines: a late send does not push the rest back
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(sender.send, i, bodies[i])
        sent = [i for i in range(n) if sender.sent[i]]
        times = [sender.sent[i] for i in sent]
        span = max(times) - min(times) if len(times) > 1 else 0.0
        accepted = [i for i in range(n) if 200 <= sender.status[i] < 300]
        deadline = time.perf_counter() + a.drain_seconds
        waiting = accepted
        while waiting and time.perf_counter() < deadline:
            time.sleep(0.05)
            waiting = [i for i in waiting if not watcher.reached(refs[i], i)]
        time.sleep(2 * a.poll_ms / 1000)
        if not watcher.is_alive():
            raise RuntimeError("the watcher thread died: the figures would be wrong")
        watcher.stop.set()
        watcher.join()
        lat: list[float] = []
        lost = coalesced = 0
        for i in accepted:
            t = watcher.visible(refs[i], i)
            if t is None:
                lost += 1
                continue
            lat.append((t - sender.sent[i]) * 1000)
            hist = watcher.seen[refs[i]]
            if hist[bisect.bisect_left(hist, (i, float("-inf")))][0] != i:
                coalesced += 1
        lat.sort()
        acks = sorted((sender.acked[i] - sender.sent[i]) * 1000 for i in accepted)
        poll_s = inspect.signature(Worker.__init__).parameters["poll_s"].default
        emit(f"{prefix}_deliveries", n)
        emit(f"{prefix}_rate_per_s", f"{(len(sent) - 1) / span:.1f}" if span else "nan")
        emit(f"{prefix}_p50_ms", f"{pct(lat, 50):.1f}")
        emit(f"{prefix}_p99_ms", f"{pct(lat, 99):.1f}")
        emit(f"{prefix}_max_ms", f"{lat[-1] if lat else float('nan'):.1f}")
        emit(f"{prefix}_ack_p50_ms", f"{pct(acks, 50):.1f}")
        emit(f"{prefix}_ack_p99_ms", f"{pct(acks, 99):.1f}")
        emit(f"{prefix}_coalesced", coalesced)
        emit(f"{prefix}_lost", lost)
        emit(f"{prefix}_refused", n - len(accepted))
        emit(f"{prefix}_resent_after_reset", sender.resent)
        if len(accepted) < n:  # which answers: 0 is none (connection error, timeout)
            by: dict[int, int] = {}
            for i in range(n):
                if not 200 <= sender.status[i] < 300:
                    by[sender.status[i]] = by.get(sender.status[i], 0) + 1
            emit(f"{prefix}_refused_by_status", " ".join(f"{k}:{v}" for k, v in sorted(by.items())))
            if sender.errors:
                emit(f"{prefix}_no_answer", " ".join(f"{k}:{v}" for k, v in sender.errors.items()))
        emit(f"{prefix}_worker_poll_ms", f"{poll_s * 1000:.0f}")
    finally:
        code = stop_process(proc)
        if code != 0:
            print(f"crmsync serve exited with {code}; log: {log}", file=sys.stderr)


# == workers on PostgreSQL =======================================================


class LatencyProxy:
    """A loopback TCP proxy that delays everything the client sends by ``delay``.

    A delay line, not a sleep per chunk: each chunk leaves ``delay`` after it
    arrived, so pipelined chunks are not delayed one after the other and every
    request/answer round trip costs exactly ``delay`` more.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self._srv: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> LatencyProxy:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._srv is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone does not
            try:
                self._srv.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._srv.close()
        with self._lock:
            for s in self._socks:
                _close(s)

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks += [client, upstream]
            line: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
            for target, args in (
                (self._ingress, (client, line)),
                (self._egress, (line, upstream, client)),
                (self._pipe, (upstream, client)),
            ):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _ingress(
        self, src: socket.socket, line: queue.SimpleQueue[tuple[float, bytes] | None]
    ) -> None:
        try:
            while data := src.recv(65536):
                line.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        line.put(None)

    @staticmethod
    def _egress(
        line: queue.SimpleQueue[tuple[float, bytes] | None], dst: socket.socket,
        src: socket.socket,
    ) -> None:
        try:
            while (item := line.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        _close(dst)
        _close(src)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@contextmanager
def fresh_pg(label: str) -> Iterator[str]:
    """A new empty PostgreSQL database, dropped afterwards."""
    name = f"crmsync_bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


WORKERS_CONFIG = """\
state: {state}
systems:
  erp:
    connector: sql
    url: {erp}
    objects:
      customer: {{table: customers, key: customer_no, updated_at: changed_at, lookback: 0}}
  crm:
    connector: sql
    url: {crm}
    objects:
      company: {{table: company, key: id, updated_at: updated_at}}
links:
  customers:
    source: erp.customer
    target: crm.company
    match: {{customer_no: org_number}}
{batch}    fields:
      - {{source: name, target: name}}
      - {{source: version, target: version}}
"""


def _pg_exec(url: str, *sql: str) -> None:
    eng = sa.create_engine(url)
    try:
        with eng.begin() as c:
            for s in sql:
                c.exec_driver_sql(s)
    finally:
        eng.dispose()


def _scalar(url: str, sql: str) -> Any:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return c.exec_driver_sql(sql).scalar_one()
    finally:
        eng.dispose()


def _queue_counts(c: sa.Connection) -> dict[str, int]:
    rows = c.exec_driver_sql("SELECT status, count(*) FROM crmsync_messages GROUP BY status")
    return {status: n for status, n in rows}


def workers_run(
    a: argparse.Namespace, root: Path, workers: int, proxy: LatencyProxy
) -> float:
    """Messages per second with ``workers`` worker processes draining MESSAGES changes."""
    from crmsync.config.loader import load_config
    from crmsync.connectors import build_connectors
    from crmsync.engine.runner import Engine
    from crmsync.state.store import StateStore, utcnow

    n = a.messages
    d = root / f"workers{workers}"
    d.mkdir()
    batch = f"    batch_size: {a.batch_size}\n" if a.batch_size else ""
    with fresh_pg("erp") as erp, fresh_pg("crm") as crm, fresh_pg("state") as state_url:
        _pg_exec(
            erp,
            "CREATE TABLE customers (customer_no text PRIMARY KEY, name text, version int,"
            " changed_at timestamp)",
            "CREATE INDEX ON customers (changed_at, customer_no)",
            "INSERT INTO customers SELECT 'C' || lpad(i::text, 7, '0'), 'v0', 0,"
            f" now() AT TIME ZONE 'UTC' FROM generate_series(1, {n}) i",
        )
        _pg_exec(
            crm,
            "CREATE TABLE company (id serial PRIMARY KEY, org_number text UNIQUE, name text,"
            " version int, updated_at timestamp)",
        )
        direct, proxied = d / "direct.yaml", d / "crmsync.yaml"
        direct.write_text(WORKERS_CONFIG.format(state=state_url, erp=erp, crm=crm, batch=batch))
        crm_via_proxy = crm.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        proxied.write_text(
            WORKERS_CONFIG.format(state=state_url, erp=erp, crm=crm_via_proxy, batch=batch)
        )

        # Set-up without the proxy: the initial migration creates every target
        # record, then each source record changes once and is queued.
        config = load_config(direct)
        state = StateStore(config.state)
        state.migrate()
        connectors = build_connectors(config, state)
        try:
            engine = Engine(config, state, connectors)
            rep = engine.capture_link("customers")
            assert rep.status == "ok" and rep.counts.get("created") == n, rep
            _pg_exec(
                erp,
                "UPDATE customers SET name = customer_no || ' v1', version = 1,"
                " changed_at = now() AT TIME ZONE 'UTC'",
            )
            # Off while the workers start, so their start-up is not timed.
            with state.begin() as c:
                state.set_link_enabled(c, "customers", False, actor="bench", now=utcnow())
            rep = engine.capture_link("customers")
            assert rep.status == "ok" and rep.counts.get("captured") == n, rep
        finally:
            for conn in connectors.values():
                conn.close()
        with state.connect() as c:
            queued = _queue_counts(c)
        # 20,000 changes of 2,000 records would collapse into 2,000 messages
        # (one pending message per record): one change per record keeps n.
        assert queued == {"pending": n}, queued

        log = (d / "workers.log").open("wb")
        procs = [
            subprocess.Popen(
                [*CRMSYNC, "worker", "-c", str(proxied)], cwd=d,
                stdout=subprocess.PIPE, stderr=log,
            )
            for _ in range(workers)
        ]
        try:
            for p in procs:
                assert p.stdout is not None
                if b"started" not in p.stdout.readline():
                    raise RuntimeError(f"worker did not start; see {d / 'workers.log'}")
            with state.begin() as c:
                state.set_link_enabled(c, "customers", True, actor="bench", now=utcnow())
            t0 = time.perf_counter()
            deadline = t0 + a.drain_timeout
            while True:
                with state.connect() as c:
                    left = _queue_counts(c)
                if not left.get("pending") and not left.get("running"):
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"queue not drained in {a.drain_timeout}s: {left}")
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                stop_process(p)
            log.close()
            state.close()
        assert not left, f"messages left in the queue: {left}"
        newest = _scalar(
            crm,
            "SELECT count(*) FROM company WHERE version = 1 AND name = org_number || ' v1'",
        )
        total = _scalar(crm, "SELECT count(*) FROM company")
        assert newest == total == n, f"{newest} of {n} records at their newest value ({total})"
        return n / elapsed


def workers_bench(a: argparse.Namespace, root: Path) -> None:
    try:
        _scalar(PG_ADMIN, "SELECT 1")
    except sa.exc.OperationalError as exc:
        print(f"workers: skipped, PostgreSQL not reachable ({exc.orig})", file=sys.stderr)
        return
    from crmsync.config.models import LinkConfig

    emit("workers_messages", a.messages)
    emit("workers_latency_ms", f"{a.latency_ms:g}")
    emit("workers_batch_size", a.batch_size or LinkConfig.model_fields["batch_size"].default)
    rates = {}
    with LatencyProxy(5432, a.latency_ms / 1000) as proxy:
        for w in (1, 4):
            rates[w] = workers_run(a, root, w, proxy)
            emit(f"workers_{w}_msgs_per_s", f"{rates[w]:,.0f}")
    emit("workers_speedup", f"{rates[4] / rates[1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webhook-seconds", type=float, default=30)
    ap.add_argument("--webhook-rate", type=float, default=200, help="deliveries per second")
    ap.add_argument("--webhook-high-rate", type=float, default=500,
                    help="then the same at this rate (0: skip)")
    ap.add_argument("--drain-seconds", type=float, default=30,
                    help="how long accepted deliveries may take to reach the target")
    ap.add_argument("--poll-ms", type=float, default=5, help="how often the target is read")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--latency-ms", type=float, default=20, help="added per target round trip")
    ap.add_argument("--batch-size", type=int, help="link batch_size (default: the engine's)")
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--skip-webhook", action="store_true")
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crmsync-bench-service-"))
    try:
        if not a.skip_webhook:
            webhook_bench(a, root, a.webhook_rate, "webhook")
            if a.webhook_high_rate:
                # The same at a higher steady rate: what the service sustains.
                webhook_bench(a, root, a.webhook_high_rate, f"webhook_{a.webhook_high_rate:g}")
        if not a.skip_workers:
            workers_bench(a, root)
    finally:
        if a.keep:
            print(f"work folder: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
