"""Entry point for `mitmdump -s addons/tokenpak.py`: exposes the addon instances; all logic lives in the package."""
from tokenpak_mitm.addon import TokenPak, watch_startup
from tokenpak_mitm.conformance.live import LiveConformance
from tokenpak_mitm.contentview import ContentviewAddon
from tokenpak_mitm.recorder import Recorder

# Order matters: Recorder and LiveConformance hook in after TokenPak has decided and emitted its row.
addons = [TokenPak(), Recorder(), LiveConformance(), ContentviewAddon()]  # the last: mitmweb's "LLM (tokenpak)" view
watch_startup(addons[0])  # mitmproxy drops a script silently on a bad or duplicated --set
