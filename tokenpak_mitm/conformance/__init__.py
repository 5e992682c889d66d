"""Conformance: invariants I1-I10 checked on recorded and live traffic.

* ``invariants`` — pure checkers over an :class:`~tokenpak_mitm.conformance.invariants.Evidence`;
  ``facts``, ``wire`` and ``secrets`` are their independent readings of wire data (frame
  splitting, decoding, marker counting, provider usage and errors, key-shaped strings), so a
  checker never trusts the code it checks.
* ``flowfile`` — a recorded ``.mitm`` flow (written by :mod:`tokenpak_mitm.proxy.recorder`).
* ``runner`` (CLI) / ``session`` / ``replay`` / ``golden`` / ``report`` — ``tokenpak conformance``:
  replay each flow through a real mitmdump, check everything, table + JUnit; ``probe`` is the
  ``-s`` script that collects the evidence inside mitmdump through TokenPak's hooks.
* ``live`` — ``--set tokenpak_conformance=warn|strict`` on user traffic.
* ``scenarios`` / ``corpus`` — what the ``flows/`` corpus records, and its generator.
"""
