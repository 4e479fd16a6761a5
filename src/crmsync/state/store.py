"""The state database: one ``StateStore`` joining the concepts kept in ``state/``.

Each concept lives in its own module, with its SQL and prebuilt statements:

- ``db``: opening, schema upgrades, transactions, dialect helpers;
- ``queue``: enqueue, claim with a lease, finish, release, retry, fail, recover;
- ``pairs``: identities with shadows, capture cursors, trigger memory;
- ``log``: runs, outcomes, record timelines (activities);
- ``admin``: tokens, audit, link switches, the scheduler, quotas;
- ``pushed``: the webhook replay ledger and the records push-only systems send;
- ``erasure``: erased records and scrubbing what the state holds about them;
- ``rules``: what each rule firing saw and how far its actions got.

Callers import from here; the modules are the place to read and change SQL.
"""

from __future__ import annotations

from crmsync.state.admin import AdminMixin
from crmsync.state.db import dumps, utcnow
from crmsync.state.erasure import ErasureMixin
from crmsync.state.log import LogMixin
from crmsync.state.pairs import Identity, PairsMixin
from crmsync.state.pushed import PushedMixin
from crmsync.state.queue import UNREACHABLE, Message, QueueMixin
from crmsync.state.rules import RulesMixin

__all__ = [
    "UNREACHABLE",
    "Identity",
    "Message",
    "StateStore",
    "dumps",
    "utcnow",
]


class StateStore(
    QueueMixin, PairsMixin, LogMixin, AdminMixin, PushedMixin, ErasureMixin, RulesMixin
):
    """Access to one state database."""
