"""The telemetry store in its own process: a fault of SQLite or of its files can cost rows, never the proxy.

SQLite memory-maps the WAL index (``tokenpak.db-shm``). When another process of the same user
truncates that file, or makes it immutable, the next access raises SIGBUS in whatever process
holds the mapping; with the store inside mitmdump that killed the proxy and all traffic with it.
So the proxy keeps no SQLite connection at all:

* ``StoreProcess`` (in the proxy) queues rows from the event loop (a plain append, as before);
  a feeder thread sends them in batches, one JSON line per batch, to the writer process's stdin.
* The writer process (``python -m tokenpak_mitm.store_writer DB``) runs ``TelemetryStore`` and
  acknowledges each row once it is durable (written to the database or appended to a spill file),
  or once it has counted it as lost (so no row is counted twice).
* The proxy keeps every row it sent until it is acknowledged. When the writer dies (SIGBUS,
  OOM kill, anything), the unacknowledged rows are appended to the spill file by the proxy
  (plain file appends, no memory map) and a new writer is started, with a back-off; it imports
  the spill file. ``INSERT OR IGNORE`` on the flow id means a row acknowledged late is not doubled.
* A row that can be neither written nor spilled (both spill locations refused) is counted as
  lost, logged when it happens and again at shutdown, and ledgered for ``tokenpak doctor``.

The writer runs in its own session (a Ctrl-C at the terminal reaches mitmdump, not it) and exits
when its stdin closes: on the proxy's clean shutdown, after flushing, and also when the proxy
was killed, so nothing is left running.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tokenpak_mitm.row import TelemetryRow
from tokenpak_mitm.store import (
    BATCH,
    FLUSH_INTERVAL,
    LINGER,
    MAX_PENDING,
    TelemetryStore,
    append_jsonl,
    record_loss,
    spill_paths,
)

__all__ = ["StoreProcess", "main"]

logger = logging.getLogger("tokenpak.store")

RESTART_BACKOFF = (0.2, 1.0, 5.0)  # seconds before the 1st, 2nd, 3rd+ restart after quick deaths
QUICK_DEATH = 5.0  # a writer that dies sooner than this after its start counts towards the back-off


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a dict; a ``TelemetryRow`` by its fields directly (``dict(row)`` goes through the
    mapping protocol, a checked lookup per column: ~20 µs of the feeder thread's GIL per row)."""
    return row.as_dict() if isinstance(row, TelemetryRow) else dict(row)


class StoreProcess:
    """The proxy side: same interface as ``TelemetryStore`` (``start``/``submit``/``close``)."""

    def __init__(self, path: str | os.PathLike[str], *, python: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.spill_path = spill_paths(self.path)[0]
        self._python = python or sys.executable
        self._queue: queue.SimpleQueue[Mapping[str, Any] | None] = queue.SimpleQueue()
        self._unacked: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._spawned_at = 0.0
        self._quick_deaths = 0
        self._next_spawn = 0.0
        self._closed = threading.Event()
        self._feeder = threading.Thread(target=self._feed, name="tokenpak-store-feeder", daemon=True)
        self.acked = 0  # rows the writer reported durable
        self.spilled_here = 0  # rows this process spilled itself (writer dead or gone)
        self.lost = 0
        self.lost_reason: str | None = None
        self.restarts = 0
        self.writer_stats: dict[str, Any] = {}

    # -- proxy-facing API (event loop) ---------------------------------------------------------
    def start(self) -> None:
        self._feeder.start()

    def submit(self, row: Mapping[str, Any]) -> None:
        """Non-blocking; safe from the event loop (a row after ``close`` is spilled directly)."""
        if self._closed.is_set():
            self._spill_or_lose([row], "submitted after the store closed")
            return
        self._queue.put(row)  # a TelemetryRow (or a mapping): serialized on the feeder thread

    def close(self, timeout: float = 15.0) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._feeder.is_alive():
            self._queue.put(None)
            self._feeder.join(timeout)
        lost = self.dropped
        if lost:
            reason = self.lost_reason or self.writer_stats.get("lost_reason")
            logger.error("tokenpak: store closed: %d telemetry rows LOST (%s); `tokenpak doctor` shows the count", lost, reason)
        else:
            logger.info("tokenpak: store closed: %d rows written or spilled, none lost", self.acked + self.spilled_here)

    @property
    def written(self) -> int:
        """Rows the writer reported durable (written or spilled by it)."""
        return self.acked

    @property
    def dropped(self) -> int:
        """Rows counted as lost, here or (as last reported) by the writer."""
        return self.lost + int(self.writer_stats.get("dropped") or 0)

    @property
    def pending(self) -> int:
        """Rows sent or queued but not yet acknowledged."""
        return len(self._unacked) + self._queue.qsize()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- feeder thread -------------------------------------------------------------------------
    def _feed(self) -> None:
        self._spawn()
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if batch:
                with self._lock:
                    for row in batch:
                        self._unacked[str(row["request_key"])] = row
                self._send(batch)
            self._watch()
        self._stop_writer()

    def _next_batch(self) -> tuple[list[Mapping[str, Any]], bool]:
        batch: list[Mapping[str, Any]] = []
        try:
            item = self._queue.get(timeout=FLUSH_INTERVAL)
            if item is None:
                return batch, True
            batch.append(item)
            time.sleep(LINGER)  # one pipe write per burst, as the in-process writer batched
            while len(batch) < BATCH:
                item = self._queue.get_nowait()
                if item is None:
                    return batch, True
                batch.append(item)
        except queue.Empty:
            pass
        return batch, False

    def _send(self, rows: Sequence[Mapping[str, Any]]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return  # kept unacknowledged; _watch spills them
        line = json.dumps([_plain(r) for r in rows], separators=(",", ":"), default=str).encode() + b"\n"
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the writer is gone; _watch sees it

    def _watch(self) -> None:
        """Writer dead? Spill what it had not acknowledged and start another (with back-off)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._bound_unacked()
            return
        if proc is not None:
            self._reap(proc, f"the store writer process exited ({_exit_text(proc.returncode)})")
        elif self._unacked:
            self._spill_unacked("the store writer is not running")
        if time.monotonic() >= self._next_spawn:
            self._spawn()

    def _bound_unacked(self) -> None:
        """A stuck writer must not grow the proxy's memory: spill the oldest beyond the bound."""
        with self._lock:
            over = len(self._unacked) - MAX_PENDING
            rows = [self._unacked.popitem(last=False)[1] for _ in range(max(0, over))]
        if rows:
            self._spill_or_lose(rows, "the store writer is not keeping up")

    def _reap(self, proc: subprocess.Popen[bytes], why: str) -> None:
        if self._reader is not None:
            self._reader.join(2.0)  # its stdout is closed: take the last acknowledgements first
        self._proc = None
        quick = time.monotonic() - self._spawned_at < QUICK_DEATH
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        delay = RESTART_BACKOFF[min(self._quick_deaths, len(RESTART_BACKOFF)) - 1] if self._quick_deaths else 0.0
        self._next_spawn = time.monotonic() + delay
        n = self._spill_unacked(why)
        logger.warning("tokenpak: %s; the proxy carries on, %d unacknowledged rows spilled to %s, restarting it%s",
                       why, n, self.spill_path, f" in {delay:g} s" if delay else "")

    def _spill_unacked(self, why: str) -> int:
        with self._lock:
            rows = list(self._unacked.values())
            self._unacked.clear()
        if rows:
            self._spill_or_lose(rows, why)
        return len(rows)

    def _spawn(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                [self._python, "-m", "tokenpak_mitm.store_writer", str(self.path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
                start_new_session=True, close_fds=True,
            )
        except OSError as e:
            self._spawned_at = time.monotonic()
            self._next_spawn = self._spawned_at + RESTART_BACKOFF[-1]
            logger.warning("tokenpak: cannot start the store writer (%s); rows are spilled to %s meanwhile", e, self.spill_path)
            return
        if self._spawned_at:
            self.restarts += 1
        self._spawned_at = time.monotonic()
        self._proc = proc
        assert proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(proc.stdout,), name="tokenpak-store-acks", daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if isinstance(msg.get("ack"), list):
                with self._lock:
                    for key in msg["ack"]:
                        if self._unacked.pop(str(key), None) is not None:
                            self.acked += 1
            elif isinstance(msg.get("lost"), list):  # counted, logged and ledgered by the writer
                with self._lock:
                    for key in msg["lost"]:
                        self._unacked.pop(str(key), None)
            elif isinstance(msg.get("stats"), dict):
                self.writer_stats = msg["stats"]

    def _stop_writer(self) -> None:
        """Clean shutdown: let the writer flush (it exits on EOF), then keep whatever it did not."""
        proc = self._proc
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                logger.warning("tokenpak: the store writer did not finish in 10 s; stopping it and spilling its rows")
                proc.kill()
                proc.wait(5.0)
            if self._reader is not None:
                self._reader.join(2.0)
            if proc.returncode:
                logger.warning("tokenpak: the store writer process exited (%s) at shutdown", _exit_text(proc.returncode))
            self._proc = None
        self._spill_unacked("not acknowledged by the store writer at shutdown")

    # -- files (no SQLite in this process) -----------------------------------------------------
    def _spill_or_lose(self, rows: Sequence[Mapping[str, Any]], why: str) -> None:
        error = ""
        for path in spill_paths(self.path):
            try:
                append_jsonl(path, rows)
            except OSError as e:
                error = f"{type(e).__name__}: {e}"
                continue
            self.spilled_here += len(rows)
            return
        self.lost += len(rows)
        self.lost_reason = f"{why}; spill failed: {error}"
        logger.error("tokenpak: %d telemetry rows LOST (%s)", len(rows), self.lost_reason)
        record_loss(self.path, len(rows), self.lost_reason)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def main(argv: Sequence[str] | None = None) -> int:
    """The writer process: JSON-line batches of rows on stdin, acknowledgements on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m tokenpak_mitm.store_writer DB\n")
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides when we stop: EOF on stdin
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    out = sys.stdout.buffer
    lock = threading.Lock()

    def say(msg: dict[str, Any]) -> None:
        with lock:
            try:
                out.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
                out.flush()
            except (OSError, ValueError):
                pass  # the proxy is gone; rows still reach the database or the spill file

    store = TelemetryStore(args[0], on_durable=lambda keys: say({"ack": keys}), on_lost=lambda keys: say({"lost": keys}))
    store.start()
    for line in sys.stdin.buffer:
        try:
            rows = json.loads(line)
        except ValueError:
            continue
        if isinstance(rows, list):
            for row in rows:
                if isinstance(row, dict):
                    try:
                        store.submit(row)
                    except ValueError as e:  # not a row of this schema: a bug, said once per row
                        logging.getLogger("tokenpak.store").error("tokenpak: store writer rejected a row (%s)", e)
    store.close(timeout=30.0)
    say({"stats": {"written": store.written, "spilled": store.spilled, "dropped": store.dropped, "lost_reason": store.lost_reason}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
