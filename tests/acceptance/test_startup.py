"""The CLI starts without loading what only a command needs.

`crmsync --help` (and every command's start) imports the CLI package; SQLAlchemy,
pydantic and the state store are imported by the commands that use them. Checked by
what is imported, not by a timing (the benchmark times start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("sqlalchemy", "pydantic", "ruamel.yaml", "crmsync.state.store", "crmsync.config.models",
         "crmsync.connectors", "crmsync.engine.runner", "fastapi")


def test_importing_the_cli_loads_no_command_dependency() -> None:
    code = (
        "import json, sys; import crmsync.cli; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60, check=True)
    assert json.loads(p.stdout) == []


def test_help_still_lists_every_command() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "crmsync", "--help"], capture_output=True,
                       text=True, env=env, timeout=60, check=True)
    for command in ("check", "plan", "sync", "log", "status", "retry", "erase", "serve",
                    "worker", "token", "schema", "open"):
        assert command in p.stdout, command
