"""Entry point for `mitmdump -s addons/tokenpak.py`: exposes the addon instances; all logic lives in the package."""
from tokenpak_mitm.addon import TokenPak
from tokenpak_mitm.conformance.live import LiveConformance
from tokenpak_mitm.recorder import Recorder

# Order matters: Recorder and LiveConformance hook in after TokenPak has decided and emitted its row.
addons = [TokenPak(), Recorder(), LiveConformance()]
