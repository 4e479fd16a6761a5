"""Who holds a queue message: worker ids and telling whether their process is gone."""

from __future__ import annotations

import os
import socket
import uuid

_HOST = socket.gethostname()


def make_worker_id() -> str:
    """``host:pid:nonce`` — unique per worker, and says where it runs."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def local_owner_gone(claimed_by: str | None) -> bool:
    """True when the claim belongs to a process on this machine that no longer runs.

    Claims from other machines are never judged here: their lease decides.
    A killed `crmsync sync` is thus recovered at once by the next run instead
    of waiting for its lease to end.
    """
    if not claimed_by:
        return True
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
