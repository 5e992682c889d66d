"""Entry for ``mitmdump -s <this file>`` (see ``script.py``; ``tokenpak run`` passes it)."""
from tokenpak_mitm.script import make_addons

addons = make_addons()
