"""The incremental and no-op figures of bench/run.py alone, on a link built once and kept.

Building and migrating a 1M-row link takes minutes; the incremental figures take seconds.
This keeps the migrated link in --dir (built on the first call), and for each of --repeat
runs copies it aside, makes --changes changes, and times `crmsync sync` (incremental) and
`crmsync sync` again (no-op), each a whole process, printing the medians.

Usage: python bench/incremental.py --dir /tmp/crmsync-inc [--rows 1000000] [--changes 1000]
                                   [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import build, sync, touch


def base(root: Path, rows: int) -> Path:
    """The migrated link of ``rows`` rows, built and synced once."""
    d = root / f"base{rows}"
    if not (d / "done").exists():
        shutil.rmtree(d, ignore_errors=True)
        build(d, rows)
        _, _, first = sync(d)
        assert first.get("created") == rows, first
        (d / "done").touch()
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True, help="where the built link is kept")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    b = base(a.dir, a.rows)
    work = a.dir / f"work{a.rows}"
    inc: list[float] = []
    noop: list[float] = []
    for _ in range(a.repeat):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(b, work)
        # The config names its folder: point it at the copy.
        cfg = work / "crmsync.yaml"
        cfg.write_text(cfg.read_text().replace(str(b), str(work)))
        touch(work, a.changes, a.rows)
        # The copy's pages reach the disk now, not during the timed run's fsyncs.
        os.sync()
        seconds, _, counts = sync(work)
        assert counts.get("updated") == a.changes, counts
        inc.append(seconds)
        seconds, _, _ = sync(work)
        noop.append(seconds)
    print(f"rows: {a.rows}")
    print(f"incremental_s: {statistics.median(inc):.3f}  {[round(x, 3) for x in inc]}")
    print(f"noop_sync_s: {statistics.median(noop):.3f}  {[round(x, 3) for x in noop]}")


if __name__ == "__main__":
    main()
