"""The ``tokenpak`` command: a thin argparse front over one module per subcommand.

Why a registry: each subcommand owns its arguments and logic in its own module, imported only
when that subcommand runs (``tokenpak setup`` must not pay for mitmproxy or OpenTelemetry
imports), and later subcommands plug in with one ``register`` call.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tokenpak_mitm import __version__

__all__ = ["main", "register", "build_parser", "Subcommand"]


class Subcommand:
    """``module`` must define ``add_arguments(parser)`` and ``run(args) -> int``.

    A plain class, not a dataclass: importing dataclasses is a tenth of `tokenpak statusline`'s
    time budget, and the status line runs on every Claude Code message."""

    __slots__ = ("name", "help", "module")

    def __init__(self, name: str, help: str, module: str) -> None:
        self.name, self.help, self.module = name, help, module


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(name: str, help: str, module: str) -> None:
    SUBCOMMANDS[name] = Subcommand(name, help, module)


register("run", "start the proxy (mitmdump with the tokenpak addon script)", "tokenpak_mitm.cli.run")
register("setup", "print the environment variables that route a client through the proxy", "tokenpak_mitm.cli.setup")
register("report", "tokens, cost, cache hit ratio and savings from the telemetry database", "tokenpak_mitm.cli.report")
register("tail", "follow a running proxy's requests, one line each", "tokenpak_mitm.cli.tail")
register("statusline", "one line for Claude Code's statusLine: this session's cost, savings, cache hits, last miss, warm-until",
         "tokenpak_mitm.cli.statusline")
register("savings", "what prompt caching would cost on a workload file or recorded flows: none, planner, best", "tokenpak_mitm.cli.savings")
register("doctor", "check the installation, CA, database, client environment and streaming", "tokenpak_mitm.cli.doctor")
register("conformance", "replay recorded flows through the proxy and check invariants I1-I10", "tokenpak_mitm.conformance.runner")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """``only``: the subcommand about to run; the others' modules are then not imported (their
    imports cost a report a third of a second, and `tokenpak statusline` must answer in 50 ms)."""
    parser = argparse.ArgumentParser(prog="tokenpak", description="tokenpak-mitm: LLM telemetry and prompt caching through mitmproxy.")
    parser.add_argument("--version", action="version", version=f"tokenpak-mitm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for sub in SUBCOMMANDS.values():
        sub_parser = subparsers.add_parser(sub.name, help=sub.help, description=sub.help)
        if only is not None and sub.name != only:
            continue
        try:
            module = importlib.import_module(sub.module)
        except ImportError as e:  # a broken install must not take `tokenpak doctor` down with it
            sub_parser.set_defaults(_module=sub.module, _broken=f"{type(e).__name__}: {e}")
            sub_parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            continue
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=sub.module, _broken=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None).parse_args(argv)
    if args._broken:
        print(f"tokenpak {args.command}: cannot load ({args._broken}); run `tokenpak doctor` for the fix", file=sys.stderr)
        return 1
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tokenpak tail | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
