"""Start-up checks of the addons' options: a mistake stops mitmdump with one line, before it listens.

mitmproxy loads a script while its servers come up, and an ``OptionsError`` raised in
``configure`` then prints a traceback, the "proxy listening" line, and only then exits. And a
misspelt ``--set tokenpak_cach=off`` is kept aside as an option no addon declared, silently: the
proxy would run with insertion on. So, before the addons report running:

* ``guard_configure`` turns an ``OptionsError`` into one line on stderr and exit status 2 (later,
  e.g. an edit in mitmweb's options editor, the error is raised as usual so mitmproxy rejects it);
* ``unknown_option_message`` names the closest valid option for an unknown ``tokenpak_*`` name.

Both happen only once mitmproxy loads the script, and mitmdump binds its listeners *before* it
loads ``-s`` scripts: for a second or two the port accepts connections (and forwards them, without
the addon) although the options are wrong. So ``tokenpak run`` (and ``make run``, which is it)
first runs ``preflight``: the same checks on the ``--set`` values, in its own process, before
mitmdump is started at all.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from mitmproxy import exceptions

__all__ = ["guard_configure", "unknown_option_message", "exit_startup", "preflight", "set_specs", "PREFIX"]

PREFIX = "tokenpak_"


def exit_startup(message: str) -> NoReturn:
    sys.stderr.write(f"tokenpak: {message} (proxy not started)\n")
    sys.stderr.flush()
    raise SystemExit(2)


def unknown_option_message(names: Iterable[str], known: Iterable[str]) -> str | None:
    """One line for the unknown ``tokenpak_*`` names among ``names``, or None when there are none."""
    known = sorted(known)
    unknown = sorted(n for n in names if n.startswith(PREFIX) and n not in known)
    if not unknown:
        return None
    parts = []
    suffixes = {k.removeprefix(PREFIX): k for k in known}  # the shared prefix would make everything look close
    for name in unknown:
        close = difflib.get_close_matches(name.removeprefix(PREFIX), list(suffixes), n=1, cutoff=0.6)
        parts.append(f"{name} (did you mean {suffixes[close[0]]}?)" if close else name)
    listing = "" if any("did you mean" in p for p in parts) else f"; valid: {', '.join(known)}"
    return f"unknown option {', '.join(parts)}{listing}"


def guard_configure[F: Callable[..., Any]](method: F) -> F:
    """Wrap an addon's ``configure``: before ``running``, a bad option value exits with one line."""

    @functools.wraps(method)
    def wrapper(self: Any, updated: set[str]) -> Any:
        try:
            return method(self, updated)
        except exceptions.OptionsError as e:
            if getattr(self, "is_running", False):
                raise
            exit_startup(str(e))

    return wrapper  # type: ignore[return-value]


def set_specs(argv: Sequence[str]) -> list[str]:
    """The ``option=value`` specs of the ``--set`` arguments in a mitmdump argv."""
    specs: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--set" and i + 1 < len(argv):
            specs.append(argv[i + 1])
        elif arg.startswith("--set="):
            specs.append(arg.removeprefix("--set="))
    return specs


class _Declared:
    """A loader that declares the addons' options on a bare ``Options`` (no master, no side effects)."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts

    def add_option(self, name: str, typespec: type, default: Any, help: str, choices: Sequence[str] | None = None) -> None:
        self.opts.add_option(name, typespec, default, help, choices)


def preflight(addons: Iterable[Any], specs: Sequence[str]) -> str | None:
    """The one-line error ``configure`` would stop start-up with for these ``--set`` specs, or None.

    Declares the addons' options (their ``load``), parses the specs as mitmproxy does, then runs
    the unknown-name check and each addon's pure ``check_options``. Nothing is started or written.
    """
    from mitmproxy import options

    opts = options.Options()
    addons = list(addons)
    for addon in addons:
        if hasattr(addon, "load"):
            addon.load(_Declared(opts))
    ours = [s for s in specs if s.split("=", 1)[0].startswith(PREFIX)]
    try:
        opts.set(*ours, defer=True)
    except exceptions.OptionsError as e:
        return str(e)
    known = [name for name in opts.keys() if name.startswith(PREFIX)]  # noqa: SIM118 - OptManager is not iterable
    message = unknown_option_message(opts.deferred.keys(), known)
    if message:
        return message
    for addon in addons:
        check = getattr(addon, "check_options", None)
        if check is not None:
            try:
                check(opts)
            except exceptions.OptionsError as e:
                return str(e)
    return None
