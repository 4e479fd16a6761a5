"""`crmsync serve` killed with SIGKILL while deliveries arrive from many connections.

Deliveries are committed in groups; each is answered only after its group's
commit. So every delivery that got its 202 is in the state after the kill, no
delivery is there in part, and a restarted serve delivers every one of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa
from hookenv import CONFIG, Clock, md, new_secret
from standardwebhooks import Webhook

SENDERS = 8
DELIVERIES = 600
KILL_AFTER = 200  # acknowledged deliveries before the kill


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp: Path, port: int, secret: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "crmsync", "serve", "--port", str(port)],
        cwd=tmp, env={**os.environ, "ESIGN_SECRET": secret},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _wait_up(http: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "serve exited"
        try:
            if http.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.1)


def test_kill_dash_nine_keeps_every_acknowledged_delivery(tmp_path: Path) -> None:
    secret = new_secret()
    crm = tmp_path / "crm.db"
    eng = sa.create_engine(f"sqlite:///{crm}")
    md.create_all(eng)
    eng.dispose()
    (tmp_path / "crmsync.yaml").write_text(
        CONFIG.format(state=f"sqlite:///{tmp_path / 'state.db'}", crm=crm, crm_secret="",
                      extra="")
    )
    hook = Webhook(secret)
    now = Clock()()
    port = _free_port()
    proc = _serve(tmp_path, port, secret)
    acked: set[int] = set()
    lock = threading.Lock()
    killed = threading.Event()
    local = threading.local()

    def send(i: int) -> None:
        if killed.is_set():
            return
        body = json.dumps({"object": "document", "id": f"D{i}", "op": "created",
                           "values": {"status": f"s{i}"}})
        headers = {
            "webhook-id": f"w{i}",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": hook.sign(f"w{i}", now, body),
            "content-type": "application/json",
        }
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        try:
            r = client.post("/hooks/esign", content=body, headers=headers)
        except httpx.TransportError:
            return  # the server was killed: no answer, no promise
        if r.status_code == 202:
            with lock:
                acked.add(i)
                if len(acked) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    proc.send_signal(signal.SIGKILL)

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_up(http, proc)
        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(send, range(DELIVERIES)))
        proc.wait(timeout=30)
        assert killed.is_set() and len(acked) >= KILL_AFTER

        with sqlite3.connect(tmp_path / "state.db") as c:
            replayed = {int(w[1:]) for (w,) in c.execute(
                "SELECT webhook_id FROM crmsync_webhook_deliveries")}
            pushed = {int(r[1:]) for (r,) in c.execute(
                "SELECT record_id FROM crmsync_pushed_records")}
        assert acked <= replayed  # every 202 was durable before it was sent
        assert replayed == pushed  # and no delivery is there in part

        port = _free_port()
        proc = _serve(tmp_path, port, secret)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_up(http, proc)
        deadline = time.monotonic() + 60
        while True:
            with sqlite3.connect(crm) as c:
                rows = dict(c.execute("SELECT ref, status FROM deal").fetchall())
            if len(rows) >= len(replayed):
                break
            assert time.monotonic() < deadline, f"{len(rows)} of {len(replayed)} delivered"
            time.sleep(0.2)
        assert rows == {f"D{i}": f"s{i}" for i in replayed}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
