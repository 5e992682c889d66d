"""Experiment: remove the flow hooks of the Recorder and LiveConformance sidecar addons.

``addons/tokenpak.py`` loads three addons. mitmproxy dispatches every hook to every addon that
has it, building the hook's arguments with ``dataclasses.fields`` each time (``Hook.args``), even
when the addon then returns at once because recording and live conformance are off (defaults).
mitmproxy skips an attribute that is ``None``, so this shows what the idle sidecars cost.
Valid only with ``tokenpak_record`` and ``tokenpak_conformance`` off.
"""

from tokenpak_mitm.conformance.live import LiveConformance
from tokenpak_mitm.recorder import Recorder

for cls in (Recorder, LiveConformance):
    for hook in ("requestheaders", "responseheaders", "response", "error"):
        if hook in vars(cls):
            setattr(cls, hook, None)
