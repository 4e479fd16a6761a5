"""``StateStore`` joins the state's concept modules; no concept hides another's method."""

from __future__ import annotations

import crmsync.state.store as store
from crmsync.state.db import Database


def test_exported_names_resolve() -> None:
    for name in store.__all__:
        assert getattr(store, name) is not None, name


def test_each_method_is_defined_by_one_concept() -> None:
    seen: dict[str, str] = {}
    for mixin in store.StateStore.__mro__:
        if mixin in (store.StateStore, object):
            continue
        for name in vars(mixin):
            if name.startswith("__"):
                continue
            assert name not in seen, f"{name} in both {seen.get(name)} and {mixin.__name__}"
            seen[name] = mixin.__name__
    assert issubclass(store.StateStore, Database)
