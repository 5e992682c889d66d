"""``tokenpak conformance [PATHS...]``: replay recorded flows through a real mitmdump, check I1-I10.

Each flow is replayed (``replay.py``) and then checked (``session.py``): the ten invariants, its
golden row (``<flow>.golden.json``; ``--update-golden`` rewrites them), the replayed chunk
boundaries and the live checker's count. Prints a flow × invariant table, optionally writes
JUnit XML, and exits 1 when anything failed. Also ``python -m tokenpak_mitm.conformance.runner``.

Kept import-light: ``tokenpak --help`` builds every subcommand's parser, and must not pay for
mitmproxy; the session is imported only when the subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", default=["flows"], help="flow files or directories of *.mitm (default: flows/)")
    parser.add_argument("--fast", action="store_true", help="replay chunks at a fixed 1 ms pace instead of the recorded timing")
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML results to FILE")
    parser.add_argument("--update-golden", action="store_true", help="rewrite each flow's golden row from this replay")
    parser.add_argument("--workdir", metavar="DIR", help="keep the replay db, probe trace, logs and re-recordings in DIR")


def run(args: argparse.Namespace) -> int:
    from tokenpak_mitm.conformance.report import failed, render_table, write_junit
    from tokenpak_mitm.conformance.session import run_conformance

    outcomes = run_conformance(args.paths, fast=args.fast, update_golden=args.update_golden, workdir=args.workdir)
    if not outcomes:
        print("no flow files found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    render_table(outcomes)
    if args.junit:
        write_junit(outcomes, args.junit)
    return 1 if failed(outcomes) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenpak conformance", description="Replay recorded flows through the proxy and check invariants I1-I10.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
