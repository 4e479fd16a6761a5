"""Deep links: from any record, the URL of the same record in every other system.

A system's ``links_to`` is a URL template with ``{system}``, ``{object}`` and
``{id}``. Only those three are replaced (a plain substitution, not
``str.format``: a template is text, never code), every value URL-quoted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from crmsync.config.models import Config
from crmsync.engine.graph import linked_records, object_config
from crmsync.model import RecordRef
from crmsync.state.store import StateStore

_PLACEHOLDER = re.compile(r"\{(system|object|id)\}")


@dataclass(frozen=True, slots=True)
class DeepLink:
    system: str
    object: str
    id: str
    # None when the system has no ``links_to``
    url: str | None

    @property
    def ref(self) -> RecordRef:
        return RecordRef(self.system, self.object, self.id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record_url(config: Config, ref: RecordRef) -> str | None:
    """The URL of one record from its system's ``links_to`` (None without one)."""
    object_config(config, ref.system, ref.object)
    template = getattr(config.systems[ref.system], "links_to", None)
    if not template:
        return None
    # safe="": an id holding "/" or "?" must stay one path segment.
    values = {"system": ref.system, "object": ref.object, "id": ref.id}
    return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)], safe=""), template)


def deep_links(config: Config, state: StateStore, ref: RecordRef) -> list[DeepLink]:
    """The record and every record paired with it, each with its URL."""
    return [
        DeepLink(r.system, r.object, r.id, record_url(config, r))
        for r in linked_records(config, state, ref)
    ]
