"""Every connector kind the config admits is under the conformance suite."""

from __future__ import annotations

from typing import Any, get_args

from conformenv import SUBJECTS

from crmsync.config.models import Config


def _kinds(tp: Any) -> set[str]:
    """The ``connector:`` values of the system models found in ``tp``."""
    fields = getattr(tp, "model_fields", None)
    if fields is not None and "connector" in fields:
        return set(get_args(fields["connector"].annotation))
    return set().union(*(_kinds(a) for a in get_args(tp))) if get_args(tp) else set()


def test_every_connector_kind_has_a_subject() -> None:
    kinds = _kinds(Config.model_fields["systems"].annotation)
    assert {"sql", "tryton", "webhook"} <= kinds
    covered = {label.partition("-")[0] for label in SUBJECTS}
    assert kinds <= covered, f"add a subject fixture for: {sorted(kinds - covered)}"
