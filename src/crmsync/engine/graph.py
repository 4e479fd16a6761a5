"""The records that are "the same" across systems: a record and everything paired with it.

Identities pair a source record with a target record per link. Following
them in both directions, through every link, gives the group of records one
real-world thing (a person, a company) has across the systems: synced
ERP -> CRM and CRM -> marketing, the ERP record yields all three. Deep links
and GDPR erasure work on that group.
"""

from __future__ import annotations

from typing import Any

from crmsync.config.models import Config
from crmsync.errors import UnknownRecordType
from crmsync.model import RecordRef
from crmsync.state.store import StateStore


def object_config(config: Config, system: str, obj: str) -> Any:
    """The config of ``system.obj``; raises ``UnknownRecordType`` naming what exists."""
    sys_cfg = config.systems.get(system)
    if sys_cfg is None:
        raise UnknownRecordType(
            f"no system named {system!r} (systems: {', '.join(config.systems)})"
        )
    ocfg = sys_cfg.objects.get(obj)
    if ocfg is None:
        raise UnknownRecordType(
            f"system {system!r} has no object {obj!r} (objects: {', '.join(sys_cfg.objects)})"
        )
    return ocfg


def linked_records(config: Config, state: StateStore, ref: RecordRef) -> list[RecordRef]:
    """``ref`` and every record paired with it through any link, transitively.

    Order: ``ref`` first, then the others by the config's order of systems and
    objects, then id: the same group comes back from any of its records.
    """
    object_config(config, ref.system, ref.object)
    seen = {ref}
    frontier = [ref]
    with state.connect() as c:
        while frontier:
            by_type: dict[str, list[str]] = {}
            for r in frontier:
                by_type.setdefault(f"{r.system}.{r.object}", []).append(r.id)
            found: list[RecordRef] = []
            for name, lc in config.links.items():
                sids = by_type.get(lc.source, [])
                tids = by_type.get(lc.target, [])
                if not sids and not tids:
                    continue
                for sid, tid in state.identity_pairs(c, name, source_ids=sids, target_ids=tids):
                    found.append(RecordRef(lc.source_system, lc.source_object, sid))
                    found.append(RecordRef(lc.target_system, lc.target_object, tid))
            frontier = []
            for r in found:
                if r not in seen:
                    seen.add(r)
                    frontier.append(r)
    return [ref, *sorted(seen - {ref}, key=_position(config))]


def _position(config: Config) -> Any:
    systems = {name: i for i, name in enumerate(config.systems)}
    objects = {
        (sname, oname): j
        for sname, sc in config.systems.items()
        for j, oname in enumerate(sc.objects)
    }

    def key(r: RecordRef) -> tuple[int, int, str]:
        return (systems.get(r.system, len(systems)), objects.get((r.system, r.object), 0), r.id)

    return key
