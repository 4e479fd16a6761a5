"""The demos: sample systems synced by the real CLI, outside the engine's package root.

``python -m crmsync.demo`` (``make demo``): an ERP and a CRM on SQLite
(``sqlite``). ``python -m crmsync.demo.tryton`` (``make demo-tryton``): the ERP
mirrored into a real Tryton server (``tryton``). Their data builders are plain
functions the tests call.
"""
