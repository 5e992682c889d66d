"""Entry point for `mitmdump -s addons/tokenpak.py`: exposes the addon instances; all logic lives in the package."""
from tokenpak_mitm.addon import TokenPak

addons = [TokenPak()]
