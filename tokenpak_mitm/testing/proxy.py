"""Run a real ``mitmdump -s addons/tokenpak.py`` subprocess on a loopback port.

Used by the end-to-end tests, ``tokenpak conformance`` and the benchmarks, so all of them run
the addon exactly as users do (script loading, option parsing, chain position, shutdown flush).
The port is whatever the OS gave (``-p 0``), read back from mitmdump's own listening line; the
addon's startup line is awaited so a silently skipped script (mitmproxy's bad ``--set`` pitfall)
fails loudly here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MitmdumpProcess", "ADDON_SCRIPT", "mitmdump_executable"]

ADDON_SCRIPT = Path(__file__).resolve().parents[2] / "addons" / "tokenpak.py"
_LISTEN = re.compile(r"listening at (?:\S+://)?\[?([0-9a-fA-F.:]+?)\]?:(\d+)")


def mitmdump_executable() -> str:
    candidate = Path(sys.executable).with_name("mitmdump")
    return str(candidate) if candidate.exists() else "mitmdump"


class MitmdumpProcess:
    def __init__(
        self,
        mode: str,
        *,
        db: str | os.PathLike[str] | None = None,
        confdir: str | os.PathLike[str],
        addon: bool = True,
        options: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        args = [mitmdump_executable(), "--listen-host", "127.0.0.1", "-p", "0", "--mode", mode, "--set", f"confdir={confdir}"]
        if addon:
            args += ["-s", str(ADDON_SCRIPT)]
            if db is not None:
                args += ["--set", f"tokenpak_db={db}"]
        for opt in options:
            args += ["--set", opt]
        args += list(extra_args)
        self.args = args
        self.addon = addon
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._port_seen = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def store_writer_pid(self, timeout: float = 10.0) -> int:
        """The pid of the addon's store writer process (a child running tokenpak_mitm.store_writer)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                try:
                    children = (task / "children").read_text().split()
                    for pid in children:
                        if b"tokenpak_mitm.store_writer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            return int(pid)
                except OSError:
                    continue  # a thread or child that just ended
            time.sleep(0.05)
        raise RuntimeError("no store writer process under mitmdump")

    def start(self, timeout: float = 30.0) -> MitmdumpProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env, bufsize=1)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._port_seen.is_set() and (self._started.is_set() or not self.addon):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("mitmdump did not start:\n" + self.output())

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
            if not self._port_seen.is_set():
                m = _LISTEN.search(line)
                if m:
                    self.port = int(m.group(2))
                    self._port_seen.set()
            if "tokenpak-mitm" in line and "running" in line:
                self._started.set()

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Graceful stop (SIGINT): the addon's ``done`` flushes every queued row."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> MitmdumpProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
