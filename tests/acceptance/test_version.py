"""`crmsync --version`: the installed package's version, before any command runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def crmsync(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env={**os.environ, "COLUMNS": "200"},
    )


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    r = crmsync(tmp_path, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"crmsync {version('crmsync')}\n"
    assert r.stderr == ""
    # The metadata is the project's own, not a stale or hard-coded string.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version("crmsync") == declared


@pytest.mark.parametrize(
    "args",
    [
        ["--version", "sync"],            # eager: the command never runs
        ["--version", "log", "--bogus"],  # nor are its arguments parsed
    ],
)
def test_version_comes_before_any_command(tmp_path: Path, args: list[str]) -> None:
    """In an empty directory: no config is read, no state database is made."""
    r = crmsync(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"crmsync {version('crmsync')}\n"
    assert list(tmp_path.iterdir()) == []


def test_help_still_lists_the_commands_and_version(tmp_path: Path) -> None:
    r = crmsync(tmp_path, "--help")
    assert r.returncode == 0, r.stderr
    for word in ("--version", "check", "plan", "sync", "log", "serve", "token"):
        assert word in r.stdout
    r = crmsync(tmp_path, "sync", "--help")
    assert r.returncode == 0, r.stderr
    assert "--full" in r.stdout


def test_version_takes_no_value(tmp_path: Path) -> None:
    r = crmsync(tmp_path, "--version=yes")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_installed_command_prints_the_version(tmp_path: Path) -> None:
    """The console script the README points at (`.venv/bin/crmsync`)."""
    script = Path(sys.executable).parent / "crmsync"
    if not script.exists():
        pytest.skip(f"no crmsync script beside {sys.executable}")
    r = subprocess.run(
        [str(script), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"crmsync {version('crmsync')}\n"


def test_license_file_is_the_apache_license_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert " ".join(text.split()[:4]) == "Apache License Version 2.0,"
    # The whole text, not a stub: every section of the terms and the appendix.
    sections = [
        "1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
        "4. Redistribution.", "5. Submission of Contributions.", "6. Trademarks.",
        "7. Disclaimer of Warranty.", "8. Limitation of Liability.",
        "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    assert len(text.split()) > 1500
