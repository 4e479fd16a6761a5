"""Rules: criteria workflows that act on captured changes (``rules:`` in the config).

capture -> rule queue -> evaluate -> firing -> actions, each step durable:

* every change queued for a link side whose object a rule watches is queued
  for the rule too, in the same transaction (``state.queue``: ``rule_feeds``);
  a rule with a ``schedule`` also polls its object itself;
* evaluation reads the record, compares it with what the rule saw last
  (``criteria``), and in one transaction saves what it saw, records the firing
  and queues its actions as one message;
* the actions run in order (``actions``); the firing remembers how far they
  got, so a crash never repeats a finished action, and a failed one is retried
  and listed as failed like any message.

crmsync's own writes are entered into what the rules saw when they are made
(``memory.note_written``), so a rule never fires on an echo of them.
"""
