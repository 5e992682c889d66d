"""Run a real ``mitmdump -s`` subprocess with the package's addon script on a loopback port.

The one mitmdump process helper: used by the end-to-end tests, ``tokenpak conformance``,
``tokenpak doctor``'s streaming check and the benchmarks, so all of them run
the addon exactly as users do (script loading, option parsing, chain position, shutdown flush).
The port is whatever the OS gave (``-p 0``), read back from mitmdump's own listening line; the
addon's startup line is awaited so a silently skipped script (mitmproxy's bad ``--set`` pitfall)
fails loudly here.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tokenpak_mitm.proxy.launch import SCRIPT, mitmdump_command, mitmdump_executable

__all__ = ["MitmdumpProcess", "ADDON_SCRIPT", "mitmdump_executable"]

ADDON_SCRIPT = SCRIPT  # the package's own entry: what `tokenpak run` and a pip install use
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LISTEN = re.compile(r"listening at (?:\S+://)?\[?([0-9a-fA-F.:]+?)\]?:(\d+)")


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
        stop_signal: int = signal.SIGINT,
        start_new_session: bool = False,
    ) -> None:
        args = [*mitmdump_command(), "--listen-host", "127.0.0.1", "-p", "0", "--mode", mode, "--set", f"confdir={confdir}"]
        if addon:
            args += ["-s", str(ADDON_SCRIPT)]
            if db is not None:
                args += ["--set", f"tokenpak_db={db}"]
        for opt in options:
            args += ["--set", opt]
        args += list(extra_args)
        self.args = args
        self.addon = addon
        # a SQLite file to wait for (a PostgreSQL URL has none)
        self.db = Path(db) if addon and db is not None and not str(db).startswith(("postgresql://", "postgres://")) else None
        self.env = {**os.environ, **(env or {})}
        self.stop_signal = stop_signal  # SIGINT or SIGTERM: either runs the addon's `done` (rows flushed)
        self.start_new_session = start_new_session
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.ports: list[int] = []  # every listener's port, in the order mitmdump reported them
        self.expect_listeners = 1
        self.listen_port = 0  # quiet(): the port picked here, polled instead of read from the output
        self.log: Path | None = None
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._port_seen = threading.Event()

    @classmethod
    def from_args(cls, args: Sequence[str], *, addon: bool = True, expect_listeners: int = 1, env: dict[str, str] | None = None,
                  stop_signal: int = signal.SIGINT, start_new_session: bool = False) -> MitmdumpProcess:
        """mitmdump with exactly these arguments (they must listen on a port, ``-p 0`` is fine)."""
        proc = cls("unused", confdir=".", addon=addon, env=env, stop_signal=stop_signal, start_new_session=start_new_session)
        proc.args = [*mitmdump_command(), *args]
        proc.expect_listeners = expect_listeners
        return proc

    @property
    def text(self) -> str:
        return self.output()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def quiet(cls, args: Sequence[str], *, log: Path | None = None, env: dict[str, str] | None = None) -> MitmdumpProcess:
        """``mitmdump -q`` on a free port picked here (``-q`` hides the "listening at" line): ready
        once the port accepts connections; output goes to ``log`` (or nowhere), not through a pipe
        this process must read. Whether the addon loaded is for the caller to check (its database)."""
        port = _free_port()
        proc = cls("unused", confdir=".", addon=False, env=env)
        proc.args = [*mitmdump_command(), "-q", "--listen-host", "127.0.0.1", "-p", str(port), *args]
        proc.listen_port, proc.log = port, log
        return proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def store_writer_pid(self, timeout: float = 10.0) -> int:
        """The pid of the addon's store writer process (a child running tokenpak_mitm.store.writer)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                try:
                    children = (task / "children").read_text().split()
                    for pid in children:
                        if b"tokenpak_mitm.store.writer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            return int(pid)
                except OSError:
                    continue  # a thread or child that just ended
            time.sleep(0.05)
        raise RuntimeError("no store writer process under mitmdump")

    def start(self, timeout: float = 30.0) -> MitmdumpProcess:
        if self.listen_port:
            return self._start_quiet(timeout)
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, bufsize=1, start_new_session=self.start_new_session)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._port_seen.is_set() and (self._started.is_set() or not self.addon):
                self._wait_for_database()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("mitmdump did not start:\n" + self.output())

    def _wait_for_database(self, timeout: float = 5.0) -> None:
        """The store writer process creates the database a moment after the addon starts: wait
        (briefly, without failing: a test may have made it impossible) until its table exists."""
        if self.db is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.1)
                try:
                    con.execute("SELECT 1 FROM requests LIMIT 1")
                    return
                finally:
                    con.close()
            except sqlite3.Error:
                time.sleep(0.02)

    def _start_quiet(self, timeout: float) -> MitmdumpProcess:
        out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
        try:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True,
                                         env=self.env, start_new_session=self.start_new_session)
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]
        self.port = self.listen_port
        self.ports = [self.port]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}" + (f" (log: {self.log})" if self.log else ""))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mitmdump did not listen on {self.port} within {timeout}s")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
            m = _LISTEN.search(line)
            if m:
                self.ports.append(int(m.group(2)))
                self.port = self.ports[0]
                if len(self.ports) >= self.expect_listeners:
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
        self.proc.send_signal(self.stop_signal)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> MitmdumpProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
