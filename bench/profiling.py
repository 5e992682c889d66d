"""Sample a running mitmdump with py-spy while a workload runs, and summarise where time goes.

Why py-spy: it attaches to the real proxy process from outside, so the proxy runs exactly as in
the timed run (no cProfile addon changing the hook chain), and with ``--nonblocking`` it does not
pause the process. It is an optional tool (``pip install py-spy`` in the venv), not a dependency.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["Sampler", "summarise"]


def _py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Sampler:
    """``py-spy record --format raw`` on ``pid`` until :meth:`stop` (bounded by ``max_seconds``)."""

    def __init__(self, pid: int, out: Path, rate: int = 1000, max_seconds: int = 600) -> None:
        exe = _py_spy()
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if exe is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--rate", str(rate),
             "--nonblocking", "--duration", str(max_seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.out if self.out.exists() else None


_LINE = re.compile(r":\d+\)$")
_IDLE = ("select (selectors.py)", "poll (selectors.py)", "wait (threading.py)", "get (queue.py)")


def _frames(stack: str) -> list[str]:
    """Frames of one stack with line numbers dropped, so a function is one entry."""
    return [_LINE.sub(")", f) for f in stack.split(";") if f]


def summarise(path: Path, top: int = 12) -> list[tuple[str, float, float]]:
    """(function, inclusive %, self %) of the functions that cost the most, as shares of the
    samples where the proxy was busy: the top self-time functions, then the addon's own frames
    (tokenpak, sqlite, logging) by inclusive time. Idle samples (a thread waiting) are dropped.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = _frames(stack)
        if not count.isdigit() or not frames or frames[-1] in _IDLE:
            continue
        n = int(count)
        busy += n
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    if not busy:
        return []
    pick = [f for f, _ in own.most_common(top)]
    pick += [f for f, _ in inclusive.most_common() if _OURS.search(f) and f not in pick][:top]
    return [(f, 100.0 * inclusive[f] / busy, 100.0 * own[f] / busy) for f in pick]


_OURS = re.compile(r"tokenpak|sqlite|logging/|addonmanager\.py|insert_markers|json/")
