"""``python -m bench``: direct vs plain mitmdump vs mitmdump + tokenpak, side by side, on loopback.

One run starts a dedicated upstream process and two ``mitmdump -q`` reverse proxies in front of
it, plus each installed peer (``make bench-peers``: TokenPak from PyPI, LiteLLM's proxy; see
``bench/peers``), then runs every workload with the setups interleaved. It prints a table and writes
``bench/results/latest.json``. Not part of the test suite: it makes no assertions; targets are
reported as met or missed. Every process it starts is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from bench import config
from bench.peers import PEERS_DIR, detect, hint, start_peer
from bench.procs import FLOOR_SCRIPT, start_mitmdump, start_upstream
from bench.report import loadavg, print_profiles, print_table, write_json
from bench.workloads import WORKLOADS, Setup, run_workload

RESULTS = Path(__file__).with_name("results")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run in well under a minute")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS), metavar="WORKLOAD",
                    help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}")
    ap.add_argument("--rounds", type=int, help="A B C rounds of the streamed workloads")
    ap.add_argument("--streams", type=int, help="concurrent streams in the concurrent workload (default 50; 10 with --quick)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="sample both proxies with py-spy during each workload; raw stacks go to DIR (perturbs timings)")
    ap.add_argument("--addon-set", action="append", default=[], metavar="OPTION=VALUE",
                    help="extra --set for the tokenpak proxy only (cost attribution, e.g. tokenpak_console=false)")
    ap.add_argument("--addon-script", action="append", default=[], type=Path, metavar="PATH",
                    help="extra -s script for the tokenpak proxy only (e.g. a variant that times or disables a part)")
    ap.add_argument("--no-floor", action="store_true",
                    help="leave out the floor setup (mitmdump with an addon whose hooks do nothing: mitmproxy's price for an addon)")
    ap.add_argument("--no-peers", action="store_true", help="leave the installed peers out (direct, plain and addon only)")
    ap.add_argument("--peers-dir", type=Path, default=PEERS_DIR, help="where `make bench-peers` put the peers' venvs")
    ap.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where to write the results")
    return ap.parse_args(argv)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the same cleanup as Ctrl-C


def _rows_logged(db: Path) -> int | None:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    except sqlite3.Error:
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cfg = config.quick if args.quick else config.full
    if args.rounds:
        cfg = config.Config(**{**asdict(cfg), "rounds": args.rounds})
    if args.streams:
        cfg = config.Config(**{**asdict(cfg), "concurrent_streams": args.streams})
    names = args.only or list(WORKLOADS)
    signal.signal(signal.SIGTERM, _sigterm)
    console = Console(width=None if sys.stdout.isatty() else 200)
    results = []
    peers, missing = ([], []) if args.no_peers else detect(args.peers_dir)
    peer_info: dict[str, dict[str, str]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokenpak-bench-")))
        upstream = start_upstream()
        stack.callback(upstream.stop)
        plain = start_mitmdump("plain", upstream.port, tmp / "conf-plain")
        stack.callback(plain.stop)
        db = tmp / "bench.db"
        options = dict(kv.split("=", 1) for kv in args.addon_set)
        addon = start_mitmdump("addon", upstream.port, tmp / "conf-addon", db=db, addon_options=options,
                               scripts=[p.resolve() for p in args.addon_script], log=tmp / "addon.log")
        stack.callback(addon.stop)
        setups = [Setup("direct", upstream.port), Setup("plain", plain.port, plain), Setup("addon", addon.port, addon)]
        if not args.no_floor:
            floor = start_mitmdump("floor", upstream.port, tmp / "conf-floor", base_script=FLOOR_SCRIPT)
            stack.callback(floor.stop)
            setups.append(Setup("floor", floor.port, floor, peer=True))
            peer_info["floor"] = {"label": "floor", "version": "-", "pid": str(floor.pid)}
        for peer in peers:
            try:
                child = start_peer(peer, upstream.port, tmp, args.peers_dir)
            except RuntimeError as e:  # a broken peer install must not cost the run
                console.print(f"[yellow]{e}; running without it[/]")
                continue
            stack.callback(child.stop)
            setups.append(Setup(peer.name, child.port, child, prefix=peer.prefix, peer=True, skips=peer.skips))
            peer_info[peer.name] = {"label": peer.label, "version": peer.version(args.peers_dir), "pid": str(child.pid)}
        for s in setups:
            stack.callback(s.close)
        console.print(f"upstream pid {upstream.pid} :{upstream.port}, plain mitmdump pid {plain.pid} :{plain.port}, "
                      f"tokenpak mitmdump pid {addon.pid} :{addon.port}; workloads: {', '.join(names)}")
        for s in setups[3:]:
            info = peer_info[s.name]
            console.print(f"peer {info['label']} {info['version']} pid {info['pid']} :{s.port}")
        if (line := hint(missing)) is not None:
            console.print(line)
        started, load_before = time.monotonic(), loadavg()
        for name in names:
            console.print(f"[bold]{name}[/] ...")
            results.append(run_workload(name, setups, upstream, cfg, args.profile))
        for s in setups:
            s.close()
        addon.stop()  # graceful: flushes the telemetry queue
        rows = _rows_logged(db)
        log_lines = (tmp / "addon.log").read_text(errors="replace").splitlines()
        sent = next(s for s in setups if s.name == "addon").requests_sent
        total = time.monotonic() - started
    print_table(results, console, tuple(peer_info))
    print_profiles(results, console)
    check = f"addon logged {rows} telemetry rows for {sent} requests" + ("" if rows == sent else "  <-- MISMATCH")
    console.print(check)
    if log_lines:  # -q leaves only errors: any line here means the addon hit a problem
        console.print(f"[yellow]tokenpak proxy printed {len(log_lines)} lines (errors); first: {log_lines[:3]}[/]")
    console.print(f"total {total:.1f} s; load average at start {load_before}, at end {loadavg()}; JSON: {args.json}")
    write_json(args.json, results, {"config": asdict(cfg), "quick": args.quick, "telemetry_check": check,
                                    "addon_variant": {"set": args.addon_set, "scripts": [str(p) for p in args.addon_script]},
                                    "total_seconds": round(total, 1), "loadavg_at_start": load_before,
                                    "peers": peer_info, "peers_missing": [p.name for p in missing]})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
