"""The Tryton connector: a Tryton server (ERP/CRM) driven only through its JSON-RPC API.

Objects are Tryton models, optionally narrowed to one kind of record: company
and person are both ``party.party`` told apart by a party category; deal and
lead are ``sale.opportunity`` in its states. Contact mechanisms (email, phone,
...) and the first address (street, postal code, city) appear as plain fields
of a party and are written through their child models, because Tryton refuses
writes of ``party.email`` and friends.

A reference (``refs``) lets a mapping reach a related record: on a deal,
``company.city`` is the city of the party the deal points to, and a write of
it updates that party (``contact.email`` likewise, through the contact
mechanism's party).

Capture follows ``last_modified_at`` (a transaction's start, so the engine
re-reads an overlap window) and also polls the children (addresses, contact
mechanisms), whose edits do not touch the parent's stamp. An archived record
(``active`` false) is still returned by ``read_changes`` but absent from
``read`` and ``scan``: the engine then treats it as deleted.

The parts, one concept each: ``rpc`` (the JSON-RPC client), ``types`` (models
as objects, values on the wire), ``core`` (calls, refusals, description),
``read``, ``capture``, ``write`` and ``timeline``.
"""

from __future__ import annotations

from crmsync.connectors.base import Capabilities
from crmsync.connectors.tryton.capture import TrytonCapture
from crmsync.connectors.tryton.timeline import TrytonTimeline
from crmsync.connectors.tryton.write import TrytonWrite


class TrytonConnector(TrytonCapture, TrytonWrite, TrytonTimeline):
    """A Tryton server reached through its JSON-RPC API."""

    capabilities = Capabilities(batch_size=200, upsert=False, activities=True, deep_links=True)
