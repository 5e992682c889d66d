"""The telemetry store in its own process: a fault of SQLite or of its files can cost rows, never the proxy.

SQLite memory-maps the WAL index (``tokenpak.db-shm``). When another process of the same user
truncates that file, or makes it immutable, the next access raises SIGBUS in whatever process
holds the mapping; with the store inside mitmdump that killed the proxy and all traffic with it.
So the proxy keeps no SQLite connection at all:

* ``StoreProcess`` (in the proxy) is the proxy's ``accounting.Sink``: ``begin`` sends what the
  session tracker reads of a request as it goes upstream, ``finish`` sends the finished request's
  record (``accounting.Finished``), from the event loop (a plain append); a feeder thread sends
  them in batches, one pickled frame per batch, to the writer process's stdin.
* The writer process (``python -m tokenpak_mitm.store.writer DB``) runs the accounting
  (``Books``: the ``Accountant``'s session tracker, miss diagnosis, pricing, the row and the
  console line) and ``TelemetryStore``, exports each written row over OTLP (``ExportingStore``),
  and acknowledges each request once its row is durable (written to the database or appended to
  a spill file), or once it has counted it as lost (so no row is counted twice). A finished
  request the writer never acknowledged is spilled by the proxy as its record (the proxy builds
  no row), and accounted by the writer that imports the spill file.
* ``LocalSink`` runs the same ``Books`` in the proxy (a frozen mitmdump; proxies that save or
  record flows, whose files carry the session columns their replays reuse): it sends rows.

Every row handed to ``StoreProcess`` ends in exactly one of: acknowledged by the writer, spilled by
the proxy, or counted lost with a cause (logged, ledgered for ``tokenpak doctor``, and in the
shutdown line). The bounds that make that hold when the writer hangs (SIGSTOP, a stuck disk, a
debugger) or falls behind (a burst at its nice 10), all in docs/reliability.md:

* The pipe is non-blocking: the feeder never waits on the writer.
* Acknowledgement bound (``ACK_TIMEOUT``): a writer that acknowledges nothing for that long while
  rows wait is treated as gone: a warning says since when, it is killed (SIGKILL ends a stopped
  process too), the proxy spills what it had not acknowledged and starts another (with back-off).
  A writer that dies is handled the same way. ``INSERT OR IGNORE`` on the flow id means a row
  acknowledged late is not doubled.
* Crash window (``CRASH_WINDOW``) and memory cap (``QUEUE_ITEMS``, ``QUEUE_BYTES``): a record that
  has waited in the proxy's memory longer than the window, or beyond the caps, is spilled by the
  proxy (a session-tracker note is dropped instead); past twice the caps (the proxy's own spill
  stalled) a row is counted lost at once rather than held. What is already in the pipe survives a
  crash of the proxy: the writer drains it (and is SIGCONT-ed if it was stopped) before it exits.
  The writer imports spill files while it runs, not only at start.
* Shutdown (``close``) is bounded (``SHUTDOWN_WAIT``): the writer gets that long to finish, then
  it is killed and its unacknowledged rows spilled; no writer process outlives the proxy.

The writer runs in its own session (a Ctrl-C at the terminal reaches mitmdump, not it) and exits
when its stdin closes: on the proxy's clean shutdown, after flushing, and also when the proxy
was killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple, Protocol

from tokenpak_mitm.core.account.accounting import (
    Accountant,
    Begin,
    ConsoleSwitch,
    Finished,
    OtlpSwitch,
    SessionFacts,
    blind_until,
    console_line,
    finished_from_json,
    finished_to_json,
)
from tokenpak_mitm.core.account.request_shape import Shape, parse_shape
from tokenpak_mitm.core.row import TelemetryRow
from tokenpak_mitm.store.dburl import display, is_postgres
from tokenpak_mitm.store.metrics import Backlog, ServeMetrics
from tokenpak_mitm.store.sqlite import (
    BATCH,
    FLUSH_INTERVAL,
    LINGER,
    SPILLED_RECORD,
    TelemetryStore,
    append_jsonl,
    last_request_at,
    newest_request,
    record_loss,
    spill_paths,
    store_local_base,
)

__all__ = ["DB_ENV", "Books", "ExportingStore", "LocalSink", "StoreProcess", "main"]

DB_ENV = "TOKENPAK_STORE_DB"  # the writer's database, passed in its environment (a URL may carry a password)

logger = logging.getLogger("tokenpak.store")

WRITER_NICENESS = 10  # the writer's scheduling priority below the proxy's (CFS weight 110 against 1024)
RESTART_BACKOFF = (0.2, 1.0, 5.0)  # seconds before the 1st, 2nd, 3rd+ restart after quick deaths
QUICK_DEATH = 5.0  # a writer that dies sooner than this after its start counts towards the back-off


# Each batch on the pipe: the pickle's length and how many out-of-band buffers follow it, each
# buffer's length, the pickle, the buffers. Request bodies travel out of band (pickle protocol 5):
# pickling a 200 KB bytes object in band costs ~170 µs of the feeder's GIL, out of band ~1 µs.
_FRAME = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
OUT_OF_BAND_BYTES = 4096  # bodies at least this long are sent out of band
SHAPE_OFFLOAD_BYTES = 32 << 10  # a LocalSink parses request bodies above this in the proxy's worker process


# What the feeder sends: a row (a mapping), a finished request, or one of three notes. The classes
# live in `accounting`, not here: the writer runs this module as __main__, and a class pickled
# from here would be a different class there.
_Item = Mapping[str, Any] | Finished | Begin | ConsoleSwitch | OtlpSwitch | ServeMetrics | Backlog


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a dict; a ``TelemetryRow`` by its fields directly (``dict(row)`` goes through the
    mapping protocol, a checked lookup per column: ~20 µs of the feeder thread's GIL per row)."""
    return row.as_dict() if isinstance(row, TelemetryRow) else dict(row)


def _wire(item: _Item) -> object:
    if isinstance(item, Mapping):
        return _plain(item)
    if isinstance(item, Begin) and item.facts.body is not None and len(item.facts.body) >= OUT_OF_BAND_BYTES:
        body = pickle.PickleBuffer(item.facts.body)  # unpickled as the bytes read for it (see `_frames`)
        return Begin(item.key, replace(item.facts, body=body))  # type: ignore[arg-type]
    return item


def _key(item: _Item) -> str | None:
    """The request key of an item that becomes a row (acknowledged by the writer), else None."""
    if isinstance(item, Finished):
        return item.record.request_key
    if isinstance(item, Mapping):
        return str(item["request_key"])
    return None


def _spilled(item: Mapping[str, Any] | Finished) -> Mapping[str, Any]:
    """What is spilled for an unacknowledged item: a finished request as its record (the writer
    that imports the spill file accounts it: the proxy builds no row), a row as it is."""
    if isinstance(item, Finished):
        return {"request_key": item.record.request_key, SPILLED_RECORD: finished_to_json(item)}
    return item


ACK_TIMEOUT = 5.0  # seconds: a writer that acknowledges nothing for this long while rows wait is treated as gone
SHUTDOWN_WAIT = 5.0  # seconds the writer may take to finish at shutdown before it is killed
CRASH_WINDOW = 1.0  # seconds an answered request's record may wait in the proxy's memory before the proxy spills it
QUEUE_ITEMS = 2_000  # items waiting to be sent; beyond this the oldest rows are spilled by the proxy
QUEUE_BYTES = 16 << 20  # bytes of items waiting (request bodies for the session tracker, mostly); likewise
HARD_ITEMS = 20_000  # past these (the proxy's own spill stalled, or a burst faster than it) a new row is counted lost
HARD_BYTES = 48 << 20  # at once rather than held: the proxy's memory stays bounded whatever happens
UNACKED_ITEMS = 20_000  # rows in the pipe or the writer, not yet durable; beyond this the oldest are spilled too
BEGIN_BODY_BYTES = 8 << 20  # a request body above this is not sent to the writer's session tracker (half QUEUE_BYTES)
FRAME_BYTES = 1 << 20  # a batch stops growing at this many bytes (at least one item)
_ROW_SIZE = 2048  # what a queued row or finished record is taken to weigh (its request body is not in it)
_SIZE_OVERHEAD = 256


class _Queued(NamedTuple):
    at: float  # time.monotonic() when it was queued
    size: int
    item: _Item


def _size(item: _Item) -> int:
    if isinstance(item, Begin):
        return _SIZE_OVERHEAD + (len(item.facts.body) if item.facts.body is not None else 0)
    if isinstance(item, Mapping | Finished):
        return _ROW_SIZE
    return _SIZE_OVERHEAD


class StoreProcess:
    """The proxy side: same interface as ``TelemetryStore`` (``start``/``submit``/``close``).

    Every row or finished request handed to it ends in exactly one of: acknowledged by the writer
    (written or spilled there), spilled here, or counted lost with a cause (``lost_by_cause``).
    """

    def __init__(self, path: str | os.PathLike[str], *, python: str | None = None) -> None:
        self.db = str(path)  # a path, or a PostgreSQL URL (which may hold a password: never shown)
        self.name = display(self.db)
        self.path = store_local_base(self.db)  # the spill file and the loss ledger are named after it
        self.spill_path = spill_paths(self.path)[0]
        self._python = python or sys.executable
        # What waits to be sent: appended on the event loop, taken by the feeder thread.
        self._q: deque[_Queued] = deque()
        self._q_bytes = 0
        self._q_lock = threading.Lock()
        self._wake = threading.Event()
        self._notes: list[_Item] = []  # console/OTLP switches taken out of a spilled stretch of the queue
        self._out: deque[memoryview] = deque()  # the frame being written to the writer's stdin
        self._out_since = 0.0  # when it was made
        self._out_keys: list[str] = []  # the keys of its rows (none once they were spilled here)
        self._fd = -1  # the writer's stdin, non-blocking
        self._unacked: OrderedDict[str, Mapping[str, Any] | Finished] = OrderedDict()
        self._waiting_since = 0.0  # monotonic: since when something has waited for an acknowledgement
        self._last_ack = 0.0
        self._console = False  # the writer prints the console line of each request it accounts
        self._otlp: str | None = None  # and exports every row it writes to this collector
        self._metrics: str | None = None  # and serves Prometheus metrics of the rows it writes here (host:port)
        self._told_backlog = (0, 0)  # the backlog and losses the writer last heard of (told only while metrics are on)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stuck: list[subprocess.Popen[bytes]] = []  # killed writers that did not die (a hung disk): reaped at shutdown
        self._spawned_at = 0.0
        self._quick_deaths = 0
        self._next_spawn = 0.0
        self._behind_warned = 0.0
        self._closed = threading.Event()
        self._stop_by = 0.0
        self._feeder = threading.Thread(target=self._feed, name="tokenpak-store-feeder", daemon=True)
        self.submitted = 0  # rows and finished requests handed to this store
        self.duplicates = 0  # of them, a second item with a key already waiting (one row: INSERT OR IGNORE)
        self.acked = 0  # rows the writer reported durable
        self.spilled_here = 0  # rows this process spilled itself (writer dead, hung or behind)
        self.lost_here = 0
        self.lost_by_writer = 0  # rows the writer counted lost (and ledgered) itself
        self.lost_by_cause: dict[str, int] = {}
        self._unledgered: dict[str, int] = {}  # losses counted on the event loop, ledgered by the feeder
        self.lost_reason: str | None = None
        self.begins_dropped = 0  # session facts not sent (the writer behind): those rows lack session columns
        self.restarts = 0
        self.unresponsive_since: float | None = None  # wall-clock time of the last acknowledgement, while the writer is hung
        self.writer_stats: dict[str, Any] = {}
        self.ready_pid: int | None = None  # the pid of the last writer that said it runs
        self.last_error: str | None = None  # (the writer's own errors are its to report)

    # -- proxy-facing API (event loop) ---------------------------------------------------------
    def start(self) -> None:
        self._feeder.start()

    def submit(self, row: Mapping[str, Any]) -> None:
        """Non-blocking; safe from the event loop (a row after ``close`` is spilled directly)."""
        self.submitted += 1
        if self._closed.is_set():
            self._spill_or_lose([row], "submitted after the store closed")
            return
        self._put(row, True)  # a TelemetryRow (or a mapping): serialized on the feeder thread

    # The accounting of requests, in the writer process (see the module's docstring).
    def begin(self, key: str, facts: SessionFacts) -> None:
        """A request went upstream: the writer's session tracker decides its session and turn."""
        if not self._closed.is_set():
            if facts.body is not None and len(facts.body) > BEGIN_BODY_BYTES:
                facts = replace(facts, body=None)  # its session from the headers: one body must not fill the queue's byte cap
            self._put(Begin(key, facts), False)

    def finish(self, done: Finished, accounted: Callable[[Mapping[str, Any] | None], None] | None = None) -> None:
        """A request ended: the writer builds, writes and (console on) prints its row."""
        self.submitted += 1
        if self._closed.is_set():
            self._spill_or_lose([done], "submitted after the store closed")
        else:
            self._put(done, True)
        if accounted is not None:
            accounted(None)

    def set_console(self, on: bool) -> None:
        if on != self._console:
            self._console = on
            self._put(ConsoleSwitch(on), False, capped=False)

    def set_otlp(self, url: str | None) -> None:
        """Export every row the writer writes (spans and gen_ai metrics) to ``url``; None: stop."""
        if url != self._otlp:
            self._otlp = url
            self._put(OtlpSwitch(url), False, capped=False)

    def set_metrics(self, address: str | None) -> None:
        """Serve Prometheus metrics of the rows the writer writes on ``host:port``; None: stop."""
        if address != self._metrics:
            self._metrics = address
            self._put(ServeMetrics(address), False, capped=False)

    def _put(self, item: _Item, keyed: bool, capped: bool = True) -> None:
        size = _size(item)
        with self._q_lock:
            full = capped and (len(self._q) >= HARD_ITEMS or self._q_bytes + size > HARD_BYTES)
            if not full:
                first = not self._q
                self._q.append(_Queued(time.monotonic(), size, item))
                self._q_bytes += size
        if full:  # the feeder cannot spill fast enough (a stalled disk): count, never block the event loop
            if keyed:
                self._count_lost(1, "the store's backlog was over its hard cap (writer and spill file both stalled)", ledger=False)
            else:
                self.begins_dropped += 1
        elif first:
            self._wake.set()

    def close(self, timeout: float = SHUTDOWN_WAIT) -> None:
        """Bounded: the writer gets ``timeout`` seconds to finish, then it is killed and what it
        had not acknowledged is spilled here; no writer process outlives this call."""
        if self._closed.is_set():
            return
        self._stop_by = time.monotonic() + timeout
        self._closed.set()
        self._wake.set()
        if self._feeder.ident is None:
            self._finish()  # never started: spill what was queued
        elif self._feeder.is_alive():
            self._feeder.join(timeout + 5.0)
        if self._feeder.is_alive():  # stuck in a file write (a hung disk): count what it still holds
            for proc in [self._proc, *self._stuck]:
                if proc is not None:
                    _kill(proc)
            with self._q_lock:
                left = [q.item for q in self._q if _key(q.item) is not None]
                self._q.clear()
            with self._lock:
                left += list(self._unacked.values())
                self._unacked.clear()
            if left:
                self._count_lost(len(left), "the store feeder was stuck in a file write at shutdown", ledger=False)
        unaccounted = self.submitted - self.duplicates - self.acked - self.spilled_here - self.lost_here - self.lost_by_writer
        if unaccounted > 0:  # a bug somewhere above: still never silent
            self._count_lost(unaccounted, "unaccounted for at shutdown", ledger=False)
        self._ledger_pending()
        lost = self.dropped
        if lost:
            causes = "; ".join(f"{n}: {cause}" for cause, n in self.lost_by_cause.items())
            if self.lost_by_writer:
                causes = "; ".join(filter(None, [causes, f"{self.lost_by_writer}: {self.writer_stats.get('lost_reason') or 'counted by the writer'}"]))
            logger.error("tokenpak: store closed: %d telemetry rows LOST (%s); `tokenpak doctor` shows the count", lost, causes)
        else:
            logger.info("tokenpak: store closed: %d rows written or spilled, none lost", self.acked + self.spilled_here)

    @property
    def written(self) -> int:
        """Rows the writer reported durable (written or spilled by it)."""
        return self.acked

    @property
    def lost(self) -> int:
        """Rows this process counted as lost (see ``lost_by_cause``)."""
        return self.lost_here

    @property
    def dropped(self) -> int:
        """Rows counted as lost, here or by the writer."""
        return self.lost_here + self.lost_by_writer

    @property
    def pending(self) -> int:
        """Rows sent or queued but not yet acknowledged."""
        return len(self._unacked) + len(self._q)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def gauges(self) -> dict[str, float]:
        """Cheap figures for a metrics endpoint (no lock, no I/O; read from any thread)."""
        return {
            "queued": len(self._q), "queued_bytes": self._q_bytes, "unacknowledged": len(self._unacked),
            "acknowledged": self.acked, "spilled": self.spilled_here, "lost": self.dropped, "restarts": self.restarts,
            "writer_unresponsive": 0 if self.unresponsive_since is None else 1,
        }

    # -- feeder thread -------------------------------------------------------------------------
    def _feed(self) -> None:
        self._spawn()
        while not self._closed.is_set():
            try:
                self._pump()
            except Exception:  # a bug here must not stop the rows: what was queued is still spilled by the bounds
                logger.exception("tokenpak: the store feeder hit an error; carrying on")
                time.sleep(FLUSH_INTERVAL)
        try:
            self._finish()
        except Exception:
            logger.exception("tokenpak: the store feeder hit an error at shutdown")

    def _pump(self) -> None:
        proc = self._proc
        if proc is not None and not self._out:
            batch = self._take(wait=True)
            if self._metrics is not None:
                batch += self._backlog(batch)
            if batch:
                self._frame(batch)
        if proc is not None and self._out:
            self._write(FLUSH_INTERVAL)
        elif proc is None:
            self._wake.wait(FLUSH_INTERVAL)  # no writer: what is queued ages and is spilled by `_bound`
            self._wake.clear()
        self._bound()
        self._watch()
        self._ledger_pending()

    def _take(self, wait: bool) -> list[_Item]:
        """The next batch (waiting up to FLUSH_INTERVAL for the first item when ``wait``)."""
        if not self._q and wait:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
        if not self._q:
            return self._notes_out()
        young = LINGER - (time.monotonic() - self._q[0].at)
        if young > 0 and wait and not self._closed.is_set():
            time.sleep(young)  # one pipe write per burst, as the in-process writer batched
        batch = self._notes_out()
        size = 0
        with self._q_lock:
            while self._q and len(batch) < BATCH and size < FRAME_BYTES:
                q = self._q.popleft()
                self._q_bytes -= q.size
                size += q.size
                batch.append(q.item)
        return batch

    def _backlog(self, batch: Sequence[_Item]) -> list[_Item]:
        """A note for the writer's metrics when they changed: rows sent or queued here and not yet
        acknowledged (``tokenpak_writer_backlog_rows``, counting the batch about to be sent) and
        rows lost (``tokenpak_rows_lost_total``)."""
        told = (len(self._unacked) + len(self._q) + sum(1 for item in batch if _key(item) is not None), self.dropped)
        if told == self._told_backlog:
            return []
        self._told_backlog = told
        return [Backlog(*told)]

    def _notes_out(self) -> list[_Item]:
        notes, self._notes = self._notes, []
        return notes

    def _frame(self, items: Sequence[_Item]) -> None:
        """Pickle a batch into ``_out`` and wait for its rows' acknowledgements."""
        now = time.monotonic()
        self._out_since, self._out_keys = now, []
        with self._lock:
            if not self._unacked:
                self._waiting_since = now
            for item in items:
                key = _key(item)
                if key is not None:
                    if key in self._unacked:
                        self.duplicates += 1
                    self._unacked[key] = item  # type: ignore[assignment]  # rows and finished requests
                    self._out_keys.append(key)
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = pickle.dumps([_wire(i) for i in items], protocol=5, buffer_callback=buffers.append)
        except Exception:  # noqa: BLE001 - a value that does not pickle must cost its own item, never the feeder
            buffers.clear()
            data = pickle.dumps([w for w in map(self._picklable, items) if w is not None], protocol=5, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        head = _FRAME.pack(len(data), len(views)) + b"".join(_LENGTH.pack(v.nbytes) for v in views)
        self._out.extend([memoryview(head), memoryview(data), *views])  # the bodies straight from the request's own bytes

    def _write(self, timeout: float) -> None:
        """Write what the pipe takes now, waiting up to ``timeout`` for room; never blocks longer."""
        try:
            _, ready, _ = select.select([], [self._fd], [], timeout)
        except (OSError, ValueError):
            self._out.clear()  # the writer is gone; _watch sees it
            return
        while ready and self._out:
            view = self._out[0]
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                return
            except OSError:
                self._out.clear()  # the writer is gone (EPIPE); its rows stay unacknowledged, so spilled
                return
            if n >= view.nbytes:
                self._out.popleft()
            else:
                self._out[0] = view[n:]

    def _bound(self) -> None:
        """The crash window and the memory cap: records older than CRASH_WINDOW, or beyond the
        queue's caps, are spilled here instead of waiting for a writer that is behind or hung."""
        now = time.monotonic()
        spill: list[Mapping[str, Any] | Finished] = []
        with self._q_lock:
            while self._q and (now - self._q[0].at > CRASH_WINDOW or len(self._q) > QUEUE_ITEMS or self._q_bytes > QUEUE_BYTES):
                q = self._q.popleft()
                self._q_bytes -= q.size
                if isinstance(q.item, Mapping | Finished):
                    spill.append(q.item)
                elif isinstance(q.item, Begin):
                    self.begins_dropped += 1  # its row is built without session columns
                else:
                    self._notes.append(q.item)
        with self._lock:
            over = len(self._unacked) - UNACKED_ITEMS
            spill += [self._unacked.popitem(last=False)[1] for _ in range(max(0, over))]
            if self._out and self._out_keys and now - self._out_since > CRASH_WINDOW:
                # A frame the pipe has not taken yet is still only in this process: spill its rows
                # (it is still written, whole, if the writer wakes; INSERT OR IGNORE keeps one row).
                spill += [item for item in (self._unacked.pop(k, None) for k in self._out_keys) if item is not None]
                self._out_keys = []
        if spill:
            if now - self._behind_warned > 60.0:
                self._behind_warned = now
                logger.warning("tokenpak: the store writer is more than %g s behind; the proxy spills rows to %s meanwhile "
                               "(the writer imports them), so a crash loses at most that window", CRASH_WINDOW, self.spill_path)
            self._spill_or_lose(spill, "the store writer was behind")

    def _watch(self) -> None:
        """Writer dead or hung? Spill what it had not acknowledged and start another (with back-off)."""
        proc = self._proc
        if proc is None:
            if time.monotonic() >= self._next_spawn and not self._closed.is_set():
                self._spawn()
            return
        if proc.poll() is not None:
            self._reap(proc, f"the store writer process exited ({_exit_text(proc.returncode)})")
            return
        with self._lock:
            waiting = bool(self._unacked) or bool(self._out)
            since = max(self._last_ack, self._waiting_since)
        silent = time.monotonic() - since
        if waiting and silent > ACK_TIMEOUT:
            self.unresponsive_since = time.time() - silent
            stamp = time.strftime("%H:%M:%S", time.localtime(self.unresponsive_since))
            logger.warning("tokenpak: the store writer (pid %d) is unresponsive: no acknowledgement since %s (%.1f s); "
                           "treating it as gone", proc.pid, stamp, silent)
            _kill(proc)
            self._reap(proc, f"the store writer was unresponsive since {stamp}")

    def _reap(self, proc: subprocess.Popen[bytes], why: str) -> None:
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self._stuck.append(proc)  # killed but not dead (in uninterruptible sleep): tried again at shutdown
        if self._reader is not None:
            self._reader.join(2.0)  # its stdout is closed: take the last acknowledgements first
        self._close_pipe(proc)
        self._proc = None
        self._out.clear()
        quick = time.monotonic() - self._spawned_at < QUICK_DEATH
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        delay = RESTART_BACKOFF[min(self._quick_deaths, len(RESTART_BACKOFF)) - 1] if self._quick_deaths else 0.0
        self._next_spawn = time.monotonic() + delay
        n = self._spill_unacked(why)
        logger.warning("tokenpak: %s; the proxy carries on, %d unacknowledged rows spilled to %s, restarting it%s",
                       why, n, self.spill_path, f" in {delay:g} s" if delay else "")

    def _spill_unacked(self, why: str) -> int:
        with self._lock:
            items = list(self._unacked.values())
            self._unacked.clear()
        if items:
            self._spill_or_lose(items, why)
        return len(items)

    def _spawn(self) -> None:
        self._told_backlog = (-1, -1)  # a new writer has heard nothing: its loss counter must start from the proxy's count
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        out = -1
        if os.name == "posix":  # (pass_fds is POSIX only; elsewhere the lines go to the inherited stderr)
            try:
                # The console lines it prints go where the proxy's own lines go (fd 1; its stdout is
                # the acknowledgement pipe): a duplicate of the proxy's fd 1, one write per line.
                out = os.dup(1)
            except OSError:
                pass
        # The database on the command line without its password (any user's `ps` shows it); the
        # writer reads the real one from its environment (readable by this user only).
        env[DB_ENV] = self.db
        argv = [self._python, "-m", "tokenpak_mitm.store.writer", self.name]
        if out >= 0:
            argv += ["--console-fd", str(out)]
        if self._console:
            argv.append("--console")
        if self._otlp:
            argv += ["--otlp", self._otlp]
        if self._metrics:
            argv += ["--metrics", self._metrics]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
                start_new_session=True, close_fds=True, pass_fds=(out,) if out >= 0 else (),
            )
        except OSError as e:
            self._spawned_at = time.monotonic()
            self._next_spawn = self._spawned_at + RESTART_BACKOFF[-1]
            logger.warning("tokenpak: cannot start the store writer (%s); rows are spilled to %s meanwhile", e, self.spill_path)
            return
        finally:
            if out >= 0:
                os.close(out)
        if self._spawned_at:
            self.restarts += 1
        self._spawned_at = time.monotonic()
        assert proc.stdin is not None and proc.stdout is not None
        self._fd = proc.stdin.fileno()
        os.set_blocking(self._fd, False)  # a hung writer must never block the feeder (see `_write`)
        with self._lock:
            self._last_ack = time.monotonic()
        self.unresponsive_since = None
        self._proc = proc
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
                    self._last_ack = time.monotonic()
                    for key in msg["ack"]:
                        if self._unacked.pop(str(key), None) is not None:
                            self.acked += 1
            elif isinstance(msg.get("lost"), list):  # counted, logged and ledgered by the writer
                with self._lock:
                    self._last_ack = time.monotonic()
                    for key in msg["lost"]:
                        if self._unacked.pop(str(key), None) is not None:
                            self.lost_by_writer += 1
            elif isinstance(msg.get("stats"), dict):
                self.writer_stats = msg["stats"]
            elif "ready" in msg:
                self.ready_pid = msg["ready"]

    def _finish(self) -> None:
        """Shutdown: send what is queued while the writer takes it, let it flush (it exits on EOF)
        until the deadline, then kill it; whatever it did not acknowledge is spilled here."""
        proc = self._proc
        while proc is not None and proc.poll() is None and time.monotonic() < self._stop_by:
            if not self._out:
                batch = self._take(wait=False)
                if not batch:
                    break
                self._frame(batch)
            self._write(max(0.0, min(FLUSH_INTERVAL, self._stop_by - time.monotonic())))
        if proc is not None:
            self._close_pipe(proc)  # EOF (a torn last frame is dropped by the writer, its rows spilled below)
            try:
                proc.wait(max(0.0, self._stop_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("tokenpak: the store writer did not finish in time at shutdown; stopping it and spilling its rows")
                _kill(proc)
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    logger.error("tokenpak: the store writer (pid %d) could not be stopped", proc.pid)
            if self._reader is not None:
                self._reader.join(2.0)
            if proc.returncode:
                logger.warning("tokenpak: the store writer process exited (%s) at shutdown", _exit_text(proc.returncode))
            self._proc = None
        for stuck in self._stuck:
            _kill(stuck)
        self._out.clear()
        with self._q_lock:
            left = [q.item for q in self._q if isinstance(q.item, Mapping | Finished)]
            self._q.clear()
            self._q_bytes = 0
        with self._lock:
            left += list(self._unacked.values())
            self._unacked.clear()
        if left:
            self._spill_or_lose(left, "not acknowledged by the store writer at shutdown")

    @staticmethod
    def _close_pipe(proc: subprocess.Popen[bytes]) -> None:
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass

    def _picklable(self, item: _Item) -> object:
        """`_wire(item)` if it pickles; else its odd values as text (a finished request's record
        through its JSON form, a row's values); else None (the item is then spilled here or counted)."""
        candidates: list[Any] = [_wire(item)]
        if isinstance(item, Finished):
            try:
                candidates.append(finished_from_json(json.loads(json.dumps(finished_to_json(item), default=str))))
            except Exception:  # noqa: BLE001 - then it is spilled
                pass
        elif isinstance(item, Mapping):
            candidates.append({k: v if v is None or isinstance(v, int | float | str) else str(v) for k, v in item.items()})
        for candidate in candidates:
            try:
                pickle.dumps(candidate, protocol=5)
            except Exception:  # noqa: BLE001 - try the next, plainer form
                continue
            return candidate
        key = _key(item)
        if key is not None:
            with self._lock:
                self._unacked.pop(key, None)
            self._spill_or_lose([item], "it could not be sent to the store writer")  # type: ignore[list-item]
        logger.error("tokenpak: a telemetry item could not be sent to the store writer; it was spilled instead")
        return None

    # -- files (no SQLite in this process) -----------------------------------------------------
    def _spill_or_lose(self, items: Sequence[Mapping[str, Any] | Finished], why: str) -> None:
        rows = [_spilled(i) for i in items]
        error = ""
        for path in spill_paths(self.path):
            try:
                append_jsonl(path, rows)
            except OSError as e:
                error = f"{type(e).__name__}: {e}"
                continue
            self.spilled_here += len(rows)
            return
        self._count_lost(len(rows), f"{why}; spill failed: {error}")

    def _count_lost(self, n: int, cause: str, ledger: bool = True) -> None:
        """Count ``n`` rows lost by ``cause``, log it, and ledger it for ``tokenpak doctor`` (now, or
        from the feeder thread when counted on the event loop, which must not write files)."""
        self.lost_here += n
        self.lost_by_cause[cause] = self.lost_by_cause.get(cause, 0) + n
        self.lost_reason = cause
        if ledger:
            logger.error("tokenpak: %d telemetry rows LOST (%s)", n, cause)
            record_loss(self.path, n, cause)
        else:
            self._unledgered[cause] = self._unledgered.get(cause, 0) + n

    def _ledger_pending(self) -> None:
        while self._unledgered:
            cause = next(iter(self._unledgered))
            n = self._unledgered.pop(cause)
            logger.error("tokenpak: %d telemetry rows LOST (%s)", n, cause)
            record_loss(self.path, n, cause)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL (it also ends a stopped process)."""
    try:
        proc.kill()
    except OSError:
        pass


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
    """The writer process: pickled batches on stdin (rows, and the two halves of each live
    request's accounting), acknowledgements on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    console, console_fd, otlp, metrics_at, rest = False, -1, None, None, []
    while args:
        arg = args.pop(0)
        if arg == "--console":
            console = True
        elif arg == "--console-fd" and args and args[0].isdigit():
            console_fd = int(args.pop(0))
        elif arg == "--otlp" and args:
            otlp = args.pop(0)
        elif arg == "--metrics" and args:
            metrics_at = args.pop(0)
        else:
            rest.append(arg)
    if len(rest) != 1:
        sys.stderr.write("usage: python -m tokenpak_mitm.store.writer DB [--console] [--console-fd N] [--otlp URL] [--metrics HOST:PORT]\n")
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides when we stop: EOF on stdin
    _continue_when_orphaned()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    log = logging.getLogger("tokenpak.store")
    try:
        # Background work: when the cores are busy, the proxy (and the clients it serves) go first.
        os.nice(WRITER_NICENESS)
    except OSError:
        pass
    out = sys.stdout.buffer
    lock = threading.Lock()

    def say(msg: dict[str, Any]) -> None:
        with lock:
            try:
                out.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
                out.flush()
            except (OSError, ValueError):
                pass  # the proxy is gone; rows still reach the database or the spill file

    say({"ready": os.getpid()})  # (after _continue_when_orphaned: from here on it cannot be left stopped)
    db = os.environ.pop(DB_ENV, None) or rest[0]
    printer = _Printer(console_fd if console_fd >= 0 else 2, console)
    accountant = Accountant()
    # Until an hour after the database's newest request this tracker cannot know what was cached
    # before it started (an earlier proxy run, or this writer before a restart).
    if is_postgres(db):  # a server round trip (or a timeout): asked on the side, rows are accounted meanwhile
        def blind() -> None:
            accountant.sessions.blind_until = blind_until(newest_request(db), time.time())

        threading.Thread(target=blind, name="tokenpak-newest", daemon=True).start()
    else:
        accountant.sessions.blind_until = blind_until(newest_request(db), time.time())
    store = TelemetryStore(db, on_durable=lambda keys: say({"ack": keys}), on_lost=lambda keys: say({"lost": keys}), account=accountant.close)
    meter = _Meter(store)
    meter.switch(metrics_at)  # before the store starts: rows imported from a spill file at start are counted
    rows = ExportingStore(store, otlp)
    books = Books(accountant, rows, printer.line)
    rows.start()
    failed = 0
    for batch in _frames(sys.stdin.buffer):
        for item in batch:
            try:
                if isinstance(item, dict):
                    rows.submit(item)  # a row a LocalSink built in the proxy
                elif isinstance(item, Finished):
                    books.finish(item)
                elif isinstance(item, Begin):
                    books.begin(*item)
                elif isinstance(item, ConsoleSwitch):
                    printer.on = item.on
                elif isinstance(item, OtlpSwitch):
                    rows.set_otlp(item.url)
                elif isinstance(item, Backlog):
                    meter.backlog, meter.lost = item.rows, item.lost
                elif isinstance(item, ServeMetrics):
                    meter.switch(item.address)
            except ValueError as e:  # not a row of this schema: a bug, said once per row
                log.error("tokenpak: store writer rejected a row (%s)", e)
            except Exception as e:  # noqa: BLE001 - one bad item must not stop the writer
                failed += 1
                if failed <= 3:
                    log.error("tokenpak: store writer could not handle an item (%s: %s)", type(e).__name__, e)
    rows.close(timeout=30.0)  # then the exporter flushes, bounded
    meter.switch(None)  # after the last rows were counted: a scrape until here sees them all
    say({"stats": {"written": store.written, "spilled": store.spilled, "dropped": store.dropped, "lost_reason": store.lost_reason}})
    return 0


def _accountant(db: str, newest: Callable[[str], float | None] = last_request_at) -> Accountant:
    accountant = Accountant()
    # Until an hour after the database's newest request this tracker cannot know what was cached
    # before it started (an earlier proxy run, or this writer before a restart).
    accountant.sessions.blind_until = blind_until(newest(db), time.time())
    return accountant


def _continue_when_orphaned() -> None:
    """Linux: when the proxy dies (even by SIGKILL) while this process is stopped (SIGSTOP, a
    debugger), SIGCONT it, so it reads EOF, writes what it holds and exits: no writer outlives the
    proxy. (SIGCONT to a running process is nothing.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGCONT))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Rows(Protocol):
    def submit(self, row: Mapping[str, Any]) -> None: ...


class Books:
    """One proxy's accounting: its ``Accountant`` turns each finished request into its row, which
    goes to the row store and (console on) to the console. Run by the writer process, or by a
    ``LocalSink`` in the proxy."""

    def __init__(self, accountant: Accountant, rows: _Rows, console: Callable[[TelemetryRow, float], None]) -> None:
        self.accountant, self.rows, self.console = accountant, rows, console

    def begin(self, key: str, facts: SessionFacts, parsed: object = None, shape: Shape | None = None) -> None:
        self.accountant.open(key, facts, parsed, shape)

    def finish(self, done: Finished) -> dict[str, Any] | None:
        """Build, write and print the request's row; returns its session columns (None: no session)."""
        row, session = self.accountant.account(done)
        self.rows.submit(row)
        self.console(row, done.ended_at)
        return session


class ExportingStore:
    """A ``TelemetryStore`` whose written rows are also exported over OTLP: the one place a row
    is exported (in the writer process, or in the proxy of a frozen mitmdump)."""

    def __init__(self, store: TelemetryStore, otlp: str | None = None) -> None:
        self.store = store
        self.db, self.name, self.path = store.db, store.name, store.path
        self._spans = _Spans(otlp)

    def start(self) -> None:
        self.store.start()

    def submit(self, row: Mapping[str, Any]) -> None:
        self.store.submit(row)
        self._spans.export(row)

    def set_otlp(self, url: str | None) -> None:
        self._spans.switch(url)

    def set_metrics(self, address: str | None) -> None:
        if address:
            logger.warning("tokenpak: tokenpak_metrics needs the store's writer process; no metrics with the in-process store")

    def close(self, timeout: float = 10.0) -> None:
        self.store.close(timeout=timeout)
        self._spans.switch(None)  # flushes, bounded

    @property
    def written(self) -> int:
        return self.store.written

    @property
    def last_error(self) -> str | None:
        return self.store.last_error

    @property
    def dropped(self) -> int:
        return self.store.dropped

    @property
    def pending(self) -> int:
        return self.store._queue.qsize()


class LocalSink:
    """The accounting in the proxy's own process (an ``accounting.Sink``): for a frozen mitmdump
    (no Python to start the writer with), tests, and proxies that save or record flows, whose files
    must carry the session columns their replays reuse. The rows go to ``rows``: the writer
    process (``StoreProcess.submit``) or, frozen, an in-process ``ExportingStore``.

    ``begin`` runs after the hook that called it returns (a task), and a body over
    ``offload_bytes`` is parsed by ``run`` (the addon's worker process), never on the event loop.
    """

    def __init__(self, rows: StoreProcess | ExportingStore, run: Callable[..., Awaitable[Any]] | None = None,
                 offload_bytes: int = SHAPE_OFFLOAD_BYTES) -> None:
        self.rows = rows
        self.db, self.name, self.path = rows.db, rows.name, rows.path
        self._run, self._offload_bytes = run, offload_bytes
        self._console = False
        self.books = Books(_accountant(rows.db), rows, self._line)
        self._begun: dict[str, tuple[asyncio.Task[None], SessionFacts]] = {}  # sessions still being read
        # Ended requests whose row waits for the session of a big body the worker still reads.
        self._awaiting: dict[str, tuple[Finished, Callable[[Mapping[str, Any] | None], None]]] = {}

    @property
    def accountant(self) -> Accountant:
        return self.books.accountant

    def start(self) -> None:
        self.rows.start()

    def begin(self, key: str, facts: SessionFacts) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven directly (tests, tools): at once
            self._open(key, facts, None, None)
            return
        # After the hook returns: parsing and hashing the prompt must not delay the request.
        task = loop.create_task(self._begin(key, facts))
        self._begun[key] = (task, facts)
        task.add_done_callback(lambda _: self._begun.pop(key, None))

    async def _begin(self, key: str, facts: SessionFacts) -> None:
        parsed: object = None
        shape: Shape | None = None
        if self._big(facts) and self._run is not None:
            # ~0.7 ms per 200 KB (250 ms for 26k blocks): in the worker process, not a thread,
            # which would hold the GIL the event loop needs; only the session hints and the
            # shape come back.
            try:
                parsed, shape = await self._run(parse_shape, facts.body, facts.dialect, True)
            except Exception:
                logger.exception("tokenpak: could not track the session; the row goes without it")
                return
        self._open(key, facts, parsed, shape)

    def _big(self, facts: SessionFacts) -> bool:
        return facts.body is not None and len(facts.body) > self._offload_bytes

    def _open(self, key: str, facts: SessionFacts, parsed: object, shape: Shape | None) -> None:
        try:
            self.books.begin(key, facts, parsed, shape)
        except Exception:
            logger.exception("tokenpak: could not track the session; the row goes without it")

    def finish(self, done: Finished, accounted: Callable[[Mapping[str, Any] | None], None]) -> None:
        key = done.record.request_key
        begun = self._begun.get(key)
        if begun is not None and not begun[0].done():
            task, facts = begun
            if self._big(facts):
                # The worker still fingerprints the request's big body: the row waits for it
                # rather than going without its session (recorded requests > 32 KB, issue 26).
                self._awaiting[key] = (done, accounted)
                task.add_done_callback(lambda _: self._session_read(key))
                return
            self._session_now(key)  # a small body whose task has not run yet: read it here
        self._finish(done, accounted)

    def _session_now(self, key: str) -> None:
        """Read the session here instead of waiting for its task (at shutdown, or a task not started yet)."""
        begun = self._begun.pop(key, None)
        if begun is not None:
            begun[0].cancel()
            self._open(key, begun[1], None, None)

    def _session_read(self, key: str) -> None:
        entry = self._awaiting.pop(key, None)
        try:  # a loop callback: nothing may escape to asyncio
            if entry is not None:
                self._finish(*entry)
        except Exception:
            logger.exception("tokenpak: could not account for a finished request")

    def _finish(self, done: Finished, accounted: Callable[[Mapping[str, Any] | None], None]) -> None:
        accounted(self.books.finish(done))

    def _line(self, row: TelemetryRow, at: float) -> None:
        if not self._console:
            return
        try:
            logging.getLogger("tokenpak").info(console_line(row))
        except Exception:  # a bad line costs the line, not the row
            logger.exception("tokenpak: could not print the console line")

    def set_console(self, on: bool) -> None:
        self._console = on

    def set_otlp(self, url: str | None) -> None:
        self.rows.set_otlp(url)

    def set_metrics(self, address: str | None) -> None:
        self.rows.set_metrics(address)

    def close(self) -> None:
        for key in list(self._awaiting):  # rows waiting for the worker's fingerprint: read it here
            self._session_now(key)
            self._session_read(key)
        for task, _ in list(self._begun.values()):
            task.cancel()
        self.rows.close()

    @property
    def written(self) -> int:
        return self.rows.written

    @property
    def last_error(self) -> str | None:
        return self.rows.last_error

    @property
    def dropped(self) -> int:
        return self.rows.dropped

    @property
    def pending(self) -> int:
        return self.rows.pending


def _frames(stream: BinaryIO) -> Iterator[list[Any]]:
    """The batches the proxy sent, until EOF (a torn last frame is dropped: the proxy spills what we did not acknowledge)."""
    while True:
        head = stream.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        size, count = _FRAME.unpack(head)
        lengths = stream.read(_LENGTH.size * count)
        if len(lengths) < _LENGTH.size * count:
            return
        data = stream.read(size)
        buffers = [stream.read(n) for (n,) in _LENGTH.iter_unpack(lengths)]
        if len(data) < size or any(len(b) < n for b, (n,) in zip(buffers, _LENGTH.iter_unpack(lengths))):
            return
        try:
            batch = pickle.loads(data, buffers=buffers)  # noqa: S301 - from the proxy that started us, over our own pipe
        except Exception:  # noqa: BLE001 - a frame we cannot read: its rows stay unacknowledged and are spilled
            continue
        if isinstance(batch, list):
            yield batch


class _Meter:
    """The Prometheus metrics of the rows this writer's store inserts (none until an address is set)."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store
        self.backlog = 0  # as the proxy last told us
        self.lost = 0
        self._metrics: Any = None
        self.address: str | None = None

    def switch(self, address: str | None) -> None:
        if address == self.address:
            return
        self.address = address
        if self._metrics is not None:
            self.store.on_inserted = None
            self._metrics.close()
            self._metrics = None
        if not address:
            return
        from tokenpak_mitm.store.metrics import Metrics, MetricsUnavailable, SpillRows, parse_address  # the optional extra, only when asked for

        try:
            host, port = parse_address(address)
            metrics = Metrics(backlog=lambda: self.backlog, spill_rows=SpillRows(self.store.spill_paths), lost=lambda: self.lost)
        except (MetricsUnavailable, ValueError) as e:
            logging.getLogger("tokenpak.metrics").error("tokenpak: %s", e)
            return
        self._metrics = metrics
        self.store.on_inserted = metrics.observe
        metrics.serve(host, port)


class _Spans:
    """The OTLP exporter of the rows the writer writes (none when no collector is configured)."""

    def __init__(self, url: str | None) -> None:
        self._exporter: Any = None
        self.switch(url)

    def switch(self, url: str | None) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()
            self._exporter = None
        if url:
            from tokenpak_mitm.store.otel import OtelExporter, OtelUnavailable  # the optional extra, only when asked for

            try:
                self._exporter = OtelExporter(url)
            except OtelUnavailable as e:
                logging.getLogger("tokenpak.otel").error("tokenpak: %s", e)

    def export(self, row: Mapping[str, Any]) -> None:
        if self._exporter is not None:
            self._exporter.export(row)


class _Printer:
    """The console line of each request the writer accounts, one write per line to the proxy's
    output, stamped and (on a terminal) coloured as mitmproxy's own log lines are: ``[HH:MM:SS.mmm]``
    when the request ended."""

    def __init__(self, fd: int, on: bool) -> None:
        self.fd, self.on = fd, on
        try:
            self.colour = os.isatty(fd)
        except OSError:
            self.colour = False

    def line(self, row: TelemetryRow, at: float) -> None:
        if not self.on:
            return
        try:
            os.write(self.fd, (stamped(console_line(row), at, self.colour) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - a closed terminal costs the line, not the row
            pass


def stamped(line: str, at: float, colour: bool = False) -> str:
    """``line`` as mitmproxy's terminal log prints a message logged at ``at`` (its MitmFormatter)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    return f"\x1b[36m\x1b[2m[{stamp}]\x1b[0m {line}\x1b[0m" if colour else f"[{stamp}] {line}"


if __name__ == "__main__":
    sys.exit(main())
