"""Start and always stop the benchmark's processes; read their CPU time and RSS from /proc.

Both proxies run through the one mitmdump helper, ``MitmdumpProcess.quiet``: ``-q`` (as
production would) hides the "listening at" line, so it picks a free port, passes it with ``-p``
and waits until it accepts connections. Whether the addon really loaded is checked from its
database. The loopback upstream is a plain ``Child``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tokenpak_mitm.sim.mitmdump import ADDON_SCRIPT, MitmdumpProcess

__all__ = ["FLOOR_SCRIPT", "PASSTHROUGH_SCRIPT", "Child", "RssSampler", "TreeRssSampler", "cpu_seconds", "descendants", "rss_kb", "start_mitmdump",
           "start_upstream", "tree_cpu_seconds"]

_TICK = os.sysconf("SC_CLK_TCK")
PASSTHROUGH_SCRIPT = Path(__file__).with_name("passthrough_stream.py")
FLOOR_SCRIPT = Path(__file__).with_name("floor_addon.py")


class Child:
    """A subprocess that is terminated (then killed) on :meth:`stop`, idempotently."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, stop_signal: int = signal.SIGTERM) -> None:
        self.name, self.proc, self.port, self.stop_signal = name, proc, port, stop_signal

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_upstream(max_seconds: float = 1800.0) -> Child:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--max-seconds", str(max_seconds)],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30.0)  # bounded: never hang on a dead child
    line = proc.stdout.readline().decode().split() if ready else []
    if len(line) != 2 or line[0] != "PORT":
        proc.kill()
        raise RuntimeError(f"bench upstream did not start: {line!r}")
    return Child("upstream", proc, int(line[1]))


def start_mitmdump(name: str, upstream_port: int, confdir: Path, *, db: Path | str | None = None,
                   addon_options: dict[str, str] | None = None, scripts: list[Path] | None = None,
                   log: Path | None = None, base_script: Path | None = None) -> MitmdumpProcess:
    """``mitmdump -q`` in reverse mode to the upstream; the same flags for both proxies.

    ``db`` given = the tokenpak addon (insertion on unless ``addon_options`` says otherwise);
    otherwise ``base_script``, by default the pass-through streaming script. Each option is passed once: mitmproxy 12.2.3
    silently skips a script whose own option is ``--set`` twice (verified), so they are merged.
    """
    args = ["--mode", f"reverse:http://127.0.0.1:{upstream_port}", "--set", f"confdir={confdir}"]
    if db is not None:
        args += ["-s", str(ADDON_SCRIPT)]
        options = {"tokenpak_db": str(db), "tokenpak_cache": "auto", **(addon_options or {})}
        args += [a for k, v in options.items() for a in ("--set", f"{k}={v}")]
    else:
        args += ["-s", str(base_script or PASSTHROUGH_SCRIPT)]
    args += [a for p in scripts or [] for a in ("-s", str(p))]
    proxy = MitmdumpProcess.quiet(args, log=log).start()  # stops with SIGINT: the addon's `done` flushes its rows
    if isinstance(db, Path):  # (a PostgreSQL URL has no file; MitmdumpProcess awaited the addon's startup line)
        _wait_for_file(proxy, db, 30.0)  # the addon opens its database when the script has loaded
    return proxy


def _wait_for_file(child: MitmdumpProcess, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"the tokenpak addon did not load (no {path} after {timeout}s)")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pid: int) -> list[int]:
    """The live child processes of ``pid``, theirs and so on (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 1000:  # bounded
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid``, its live descendants, and its children already waited for (cutime + cstime)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    total = sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
    for child in descendants(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            continue  # ended between the listing and the read
    return total


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples a process's VmRSS every ``period`` seconds in a thread until stopped (bounded)."""

    def __init__(self, pid: int, period: float = 0.02, max_seconds: float = 600.0) -> None:
        self.pid, self.period, self.max_seconds = pid, period, max_seconds
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rss-{pid}")

    def _rss(self) -> int:
        return rss_kb(self.pid)

    def __enter__(self) -> RssSampler:
        self.samples.append(self._rss())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.samples.append(self._rss())

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.wait(self.period) and time.monotonic() < deadline:
            try:
                self.samples.append(self._rss())
            except OSError:
                return

    @property
    def baseline_kb(self) -> int:
        return self.samples[0]

    @property
    def peak_kb(self) -> int:
        return max(self.samples)


class TreeRssSampler(RssSampler):
    """Like :class:`RssSampler`, summing VmRSS over the process and its descendants (pages they
    share, such as a forked child's, count once per process: an upper bound)."""

    def _rss(self) -> int:
        total = rss_kb(self.pid)
        for child in descendants(self.pid):
            try:
                total += rss_kb(child)
            except OSError:
                continue
        return total
