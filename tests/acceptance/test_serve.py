"""`crmsync serve` as a real process: API, scheduler and worker working together."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from crmsync.demo import sqlite as demo


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _crmsync(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERP_DB_URL": "sqlite:///erp.db"}
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args], cwd=work, env=env, capture_output=True,
        text=True, timeout=120, check=True,
    )


def test_serve_runs_requested_syncs_end_to_end(tmp_path: Path) -> None:
    demo.build_erp(tmp_path / "erp.db", 800)
    demo.build_crm(tmp_path / "crm.db", tmp_path / "erp.db")
    demo.write_config(tmp_path / "crmsync.yaml")
    admin = _crmsync(tmp_path, "token", "create", "--role", "admin").stdout.strip().splitlines()[-1]
    viewer = _crmsync(tmp_path, "token", "create", "--role", "viewer", "--name", "v")
    viewer_token = viewer.stdout.strip().splitlines()[-1]

    port = _free_port()
    env = {**os.environ, "ERP_DB_URL": "sqlite:///erp.db"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.2)
            auth = {"Authorization": f"Bearer {admin}"}
            # no schedule: nothing runs until asked; a viewer may not ask
            r = http.post("/api/links/customers/sync", headers={
                "Authorization": f"Bearer {viewer_token}"})
            assert r.status_code == 403
            assert http.post("/api/links/customers/sync", headers=auth).status_code == 202

            def companies() -> int:
                with sqlite3.connect(tmp_path / "crm.db") as c:
                    return c.execute("SELECT count(*) FROM company").fetchone()[0]

            start = companies()
            deadline = time.monotonic() + 60
            while companies() == start:
                assert time.monotonic() < deadline, "the requested migration never ran"
                time.sleep(0.2)
            # an explicit record sync, applied by the worker
            with sqlite3.connect(tmp_path / "erp.db") as c:
                (no,) = c.execute(
                    "SELECT customer_no FROM customers WHERE contract_status = 'active'"
                    " ORDER BY customer_no LIMIT 1"
                ).fetchone()
                c.execute("UPDATE customers SET name = 'Via the API' WHERE customer_no = ?",
                          (no,))
            deadline = time.monotonic() + 30
            while True:
                r = http.post("/api/links/customers/sync", headers=auth,
                              json={"records": [no]})
                assert r.status_code == 202, r.text
                time.sleep(0.5)
                with sqlite3.connect(tmp_path / "crm.db") as c:
                    row = c.execute("SELECT name FROM company WHERE org_number = ?",
                                    (no,)).fetchone()
                if row and row[0] == "Via the API":
                    break
                assert time.monotonic() < deadline, "the record sync was not applied"
            outcomes = http.get(f"/api/records/erp/customer/{no}/outcomes", headers=auth)
            assert outcomes.status_code == 200 and outcomes.json()
            metrics = http.get("/metrics").text
            assert "crmsync_queue_messages" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert admin.encode() not in out
