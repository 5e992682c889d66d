"""Conformance: invariants I1-I10 checked on recorded and live traffic.

* ``invariants`` — pure checkers over an :class:`~tokenpak_mitm.conformance.invariants.Evidence`.
* ``wire`` / ``secrets`` — independent re-implementations (frame splitting, decoding, marker
  counting, key-shaped strings) so a checker never trusts the code it checks.
* ``flowfile`` — reading a recorded ``.mitm`` flow (written by :mod:`tokenpak_mitm.recorder`).
* ``replay`` / ``runner`` / ``report`` — ``tokenpak conformance``: replay each flow through a real
  mitmdump and check everything; ``probe`` is the ``-s`` script that collects evidence inside it.
* ``live`` — ``--set tokenpak_conformance=warn|strict`` on user traffic.
* ``corpus`` — regenerates the ``flows/`` corpus.
"""
