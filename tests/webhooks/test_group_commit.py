"""Group commit: deliveries committed together, each with its own answer."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from hookenv import Env

from crmsync.api.hooks import ChangeIn, _commit_group, _Delivery, _GroupCommit, _Hook, _Refused
from crmsync.state import schema as S


def _hook(env: Env) -> _Hook:
    return _Hook("esign", None, env.ctx.connectors["esign"], frozenset({"document"}))  # type: ignore[arg-type]


def _delivery(env: Env, wid: str, doc: str, **values: Any) -> _Delivery:
    change = ChangeIn.model_validate(
        {"object": "document", "id": doc, "op": "created", "values": values or {"status": wid}}
    )
    return _Delivery(_hook(env), wid, [change])


def _error(d: _Delivery) -> _Refused:
    assert isinstance(d.error, _Refused), d.error
    return d.error


def _replay_ids(env: Env) -> set[str]:
    with env.ctx.state.connect() as c:
        return set(c.execute(sa.select(S.webhook_deliveries.c.webhook_id)).scalars())


def test_one_group_answers_each_delivery_and_refuses_replays(env: Env) -> None:
    assert env.post({"object": "document", "id": "OLD", "op": "created"}, "old").status_code == 202
    group = [
        _delivery(env, "a", "A"),
        _delivery(env, "a", "A2"),  # the same id again, in the same group
        _delivery(env, "old", "B"),  # accepted before
        _delivery(env, "c", "C"),
    ]
    _commit_group(env.ctx, group)
    assert [d.outcome for d in group] == [(1, 1), None, None, (1, 1)]
    assert _error(group[1]).status == _error(group[2]).status == 409
    assert _replay_ids(env) == {"old", "a", "c"}
    env.sync()
    assert set(env.crm_rows()) == {"OLD", "A", "C"}


def test_a_delivery_that_fails_in_a_group_leaves_the_others_committed(env: Env) -> None:
    # An unknown field passes no validation; built by hand, it fails inside the
    # group's transaction, which is then committed again one delivery at a time.
    bad = _delivery(env, "bad", "X", nope="x")
    group = [_delivery(env, "ok1", "A"), bad, _delivery(env, "ok2", "B")]
    _commit_group(env.ctx, group)
    assert group[0].outcome == group[2].outcome == (1, 1)
    assert _error(bad).status == 422 and "nope" in str(_error(bad).detail)
    assert _replay_ids(env) == {"ok1", "ok2"}  # nothing of the refused one is kept


def test_concurrent_callers_each_get_their_answer_after_a_commit(env: Env) -> None:
    gc = _GroupCommit(env.ctx)
    n = 60
    answers: dict[int, Any] = {}
    start = threading.Barrier(n)

    def call(i: int) -> None:
        start.wait(timeout=10)
        try:
            answers[i] = gc.commit(_delivery(env, f"w{i % 50}", f"D{i}"))
        except _Refused as r:
            answers[i] = r.status

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    # w0..w9 were sent twice: one of each pair accepted, the other a replay
    assert sorted(map(str, answers.values())) == sorted(["(1, 1)"] * 50 + ["409"] * 10)
    assert _replay_ids(env) == {f"w{i}" for i in range(50)}
    with env.ctx.state.connect() as c:
        queued = c.execute(sa.select(sa.func.count()).select_from(S.messages)).scalar_one()
    assert queued == 50
    assert not gc._waiting and not gc._busy
