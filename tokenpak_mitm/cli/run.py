"""``tokenpak run``: start mitmdump with the package's addon script. The one definition of how the
proxy is started: ``make run`` calls it (its variables map to these options), and a ``pip
install`` with no checkout and no Makefile uses it directly.

Defaults: loopback, port 8766, reverse mode to api.anthropic.com, mitmdump's own per-flow lines
off (they print full URLs, a Gemini ``?key=`` included), mitmproxy's per-connection lines off
(``tokenpak_quiet=true``), and in regular mode TLS interception scoped to the LLM API hosts.
Anything after ``--`` goes to mitmdump unchanged, e.g. ``tokenpak run -- --set tokenpak_cache=off``.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "command", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8766, help="listen port (default: 8766)")
    parser.add_argument("--mode", default="reverse:https://api.anthropic.com",
                        help="mitmproxy mode: reverse:https://api.anthropic.com (default), regular, ...")
    parser.add_argument("--flow-detail", nargs="?", type=int, const=2, default=0, metavar="N",
                        help="mitmdump's own per-flow lines, 0-4 (default 0: off, they show full URLs; bare: 2)")
    parser.add_argument("--quiet", choices=("true", "false"), default="true",
                        help="hide mitmproxy's per-connection lines (default: true; make run's QUIET)")
    parser.add_argument("--extra-hosts", default="", help="comma-separated extra LLM API hosts (a company gateway): classified and, in regular mode, intercepted")
    parser.add_argument("--intercept-all", action="store_true", help="regular mode: decrypt every host, not only the LLM APIs")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the mitmdump command instead of running it")
    parser.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="-- then extra mitmdump arguments")


def command(args: argparse.Namespace) -> list[str]:
    """The mitmdump argv for these options (pure: tested without starting anything)."""
    from tokenpak_mitm.cli.setup import LLM_HOSTS, allow_hosts_pattern
    from tokenpak_mitm.proxy.launch import SCRIPT, mitmdump_executable

    argv = [mitmdump_executable(), "--listen-host", args.host, "-p", str(args.port), "--mode", args.mode,
            "--set", f"flow_detail={args.flow_detail}"]
    extra_hosts = tuple(h.strip() for h in args.extra_hosts.split(",") if h.strip())
    if args.mode.startswith("regular") and not args.intercept_all:
        argv += ["--allow-hosts", allow_hosts_pattern((*LLM_HOSTS, *extra_hosts))]
    for host in extra_hosts:
        argv += ["--set", f"tokenpak_hosts={host}"]
    argv += ["-s", str(SCRIPT), "--set", f"tokenpak_quiet={args.quiet}"]
    extra = list(args.mitmdump_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    modes = [args.mode, *(extra[i + 1] for i, a in enumerate(extra[:-1]) if a in ("--mode", "-m")),
             *(a.removeprefix("--mode=") for a in extra if a.startswith("--mode="))]
    if all(m.startswith("reverse:") for m in modes) and not any("connection_strategy" in a for a in extra):
        # mitmproxy's default (eager) connects upstream when the client connects, and when that
        # fails it drops the client before reading the request: an empty reply and no row. Lazy
        # connects for the request, so an unreachable upstream gets a 502 with the reason and a
        # row (upstream_unreachable). Regular mode keeps eager (it mirrors the upstream's TLS).
        argv += ["--set", "connection_strategy=lazy"]
    return argv + extra


def run(args: argparse.Namespace) -> int:
    argv = command(args)
    if args.print_only:
        import shlex

        print(" ".join(shlex.quote(a) for a in argv))
        return 0
    # mitmdump listens before it loads the addon script, so a misspelt or bad --set would leave
    # the port open (and forwarding, without the addon) until the addon stops it: check first.
    from tokenpak_mitm.proxy.startup import preflight, set_specs
    from tokenpak_mitm.script import make_addons

    message = preflight(make_addons(watch=False), set_specs(argv))
    if message:
        print(f"tokenpak: {message} (proxy not started)", file=sys.stderr)
        return 2
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)  # mitmdump becomes this process: signals and exit code are its own
    except OSError as e:
        print(f"tokenpak run: cannot start {argv[0]}: {e}", file=sys.stderr)
        return 127
    return 0  # not reached
