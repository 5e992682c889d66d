"""Entry point for `mitmdump -s addons/tokenpak.py`: exposes the addon instances; all logic lives in the package."""
from tokenpak_mitm.addon import TokenPak, watch_startup
from tokenpak_mitm.conformance.live import LiveConformance
from tokenpak_mitm.recorder import Recorder

# Any order works: Recorder and LiveConformance build on TokenPak through its hooks (hooks.py).
addons = [TokenPak(), Recorder(), LiveConformance()]
watch_startup(addons[0])  # mitmproxy drops a script silently on a bad or duplicated --set
