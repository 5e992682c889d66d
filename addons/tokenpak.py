"""Entry point for `mitmdump -s addons/tokenpak.py` in a checkout; the package's own is tokenpak_mitm/mitmdump_entry.py."""
from tokenpak_mitm.script import make_addons

addons = make_addons()
