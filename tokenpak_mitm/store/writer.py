"""The telemetry store in its own process: a fault of SQLite or of its files can cost rows, never the proxy.

SQLite memory-maps the WAL index (``tokenpak.db-shm``). When another process of the same user
truncates that file, or makes it immutable, the next access raises SIGBUS in whatever process
holds the mapping; with the store inside mitmdump that killed the proxy and all traffic with it.
So the proxy keeps no SQLite connection at all:

* ``StoreProcess`` (in the proxy) queues rows from the event loop (a plain append, as before);
  a feeder thread sends them in batches, one pickled frame per batch, to the writer process's stdin.
* It also carries the accounting of live requests (``accounting.py``), so that the session
  tracker, the miss diagnosis, pricing, the row and the console line cost the proxy's event loop
  nothing: ``begin`` sends what the session tracker reads of a request as it goes upstream,
  ``account`` sends the finished request's record, and the writer's ``Accountant`` builds the row.
* The writer process (``python -m tokenpak_mitm.store.writer DB``) runs ``TelemetryStore`` and
  acknowledges each row once it is durable (written to the database or appended to a spill file),
  or once it has counted it as lost (so no row is counted twice). A finished request whose row the
  writer never acknowledged is built into its row by the proxy (without its session columns: the
  writer's tracker had them) and spilled like any other.
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
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, BinaryIO

from tokenpak_mitm.core.account.accounting import Accountant, Begin, ConsoleSwitch, Finished, OtlpSwitch, SessionFacts, blind_until, console_line, minimal_row
from tokenpak_mitm.core.row import TelemetryRow
from tokenpak_mitm.store.metrics import Backlog, ServeMetrics
from tokenpak_mitm.store.sqlite import (
    BATCH,
    FLUSH_INTERVAL,
    LINGER,
    MAX_PENDING,
    TelemetryStore,
    append_jsonl,
    last_request_at,
    record_loss,
    spill_paths,
)

__all__ = ["StoreProcess", "main"]

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


def _as_row(item: Mapping[str, Any] | Finished) -> Mapping[str, Any]:
    """What is spilled for an unacknowledged item: a finished request becomes its row here
    (without session columns: they were the writer's)."""
    if isinstance(item, Finished):
        try:
            return Accountant.row(item.record, item.ended, {}).as_dict()
        except Exception:  # noqa: BLE001 - the request is still counted
            return minimal_row(item.record).as_dict()
    return item


class StoreProcess:
    """The proxy side: same interface as ``TelemetryStore`` (``start``/``submit``/``close``)."""

    def __init__(self, path: str | os.PathLike[str], *, python: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.spill_path = spill_paths(self.path)[0]
        self._python = python or sys.executable
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._unacked: OrderedDict[str, Mapping[str, Any] | Finished] = OrderedDict()
        self._console = False  # the writer prints the console line of each request it accounts
        self._otlp: str | None = None  # and exports every row it writes to this collector
        self._metrics: str | None = None  # and serves Prometheus metrics of the rows it writes here (host:port)
        self._told_backlog = 0  # the backlog the writer last heard of (sent only while metrics are on)
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

    # The accounting of live requests, in the writer process (see the module's docstring).
    accounts = True

    def begin(self, key: str, facts: SessionFacts) -> None:
        """A request went upstream: the writer's session tracker decides its session and turn."""
        if not self._closed.is_set():
            self._queue.put(Begin(key, facts))

    def account(self, done: Finished) -> None:
        """A request ended: the writer builds, writes and (console on) prints its row."""
        if self._closed.is_set():
            self._spill_or_lose([_as_row(done)], "submitted after the store closed")
            return
        self._queue.put(done)

    def set_console(self, on: bool) -> None:
        if on != self._console:
            self._console = on
            self._queue.put(ConsoleSwitch(on))

    def set_otlp(self, url: str | None) -> None:
        """Export every row the writer writes (spans and gen_ai metrics) to ``url``; None: stop."""
        if url != self._otlp:
            self._otlp = url
            self._queue.put(OtlpSwitch(url))

    def set_metrics(self, address: str | None) -> None:
        """Serve Prometheus metrics of the rows the writer writes on ``host:port``; None: stop."""
        if address != self._metrics:
            self._metrics = address
            self._queue.put(ServeMetrics(address))

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
            try:
                batch, stop = self._next_batch()
                if batch:
                    with self._lock:
                        for item in batch:
                            key = _key(item)
                            if key is not None:
                                self._unacked[key] = item  # type: ignore[assignment]  # rows and finished requests
                    self._send(batch)
                if self._metrics is not None:
                    self._tell_backlog()
                self._watch()
            except Exception:  # a bug here must not stop the rows: what was queued is unacknowledged, so spilled
                logger.exception("tokenpak: the store feeder hit an error; carrying on")
                time.sleep(FLUSH_INTERVAL)
        self._stop_writer()

    def _tell_backlog(self) -> None:
        """The writer's metrics show the backlog as the proxy sees it (rows not yet acknowledged)."""
        rows = self.pending
        if rows != self._told_backlog:
            self._told_backlog = rows
            self._send([Backlog(rows)])

    def _next_batch(self) -> tuple[list[_Item], bool]:
        batch: list[_Item] = []
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

    def _send(self, items: Sequence[_Item]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return  # kept unacknowledged; _watch spills them
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = pickle.dumps([_wire(i) for i in items], protocol=5, buffer_callback=buffers.append)
        except Exception:  # noqa: BLE001 - a value that does not pickle must cost its own item, never the feeder
            buffers.clear()
            data = pickle.dumps([w for w in map(self._picklable, items) if w is not None], protocol=5, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        try:
            proc.stdin.write(_FRAME.pack(len(data), len(views)) + b"".join(_LENGTH.pack(v.nbytes) for v in views) + data)
            for view in views:
                proc.stdin.write(view)  # straight from the request's own bytes, no copy here
            proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the writer is gone; _watch sees it

    def _picklable(self, item: _Item) -> object:
        """`_wire(item)` if it pickles; else a finished request as the row built here, a row as its
        values in text; else None (the item is then spilled by `_watch` or counted, as unacknowledged)."""
        candidates: list[Any] = [_wire(item)]
        if isinstance(item, Mapping | Finished):
            row = _as_row(item)
            candidates += [row, {k: v if v is None or isinstance(v, int | float | str) else str(v) for k, v in row.items()}]
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
            items = [self._unacked.popitem(last=False)[1] for _ in range(max(0, over))]
        if items:
            self._spill_or_lose(items, "the store writer is not keeping up")

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
            items = list(self._unacked.values())
            self._unacked.clear()
        if items:
            self._spill_or_lose(items, why)
        return len(items)

    def _spawn(self) -> None:
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
        argv = [self._python, "-m", "tokenpak_mitm.store.writer", str(self.path)]
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
    def _spill_or_lose(self, items: Sequence[Mapping[str, Any] | Finished], why: str) -> None:
        rows = [_as_row(i) for i in items]
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

    db = rest[0]
    accountant = Accountant()
    # Until an hour after the database's newest request this tracker cannot know what was cached
    # before it started (an earlier proxy run, or this writer before a restart).
    accountant.sessions.blind_until = blind_until(last_request_at(db), time.time())
    store = TelemetryStore(db, on_durable=lambda keys: say({"ack": keys}), on_lost=lambda keys: say({"lost": keys}))
    meter = _Meter(store)
    meter.switch(metrics_at)  # before the store starts: rows imported from a spill file at start are counted
    store.start()
    printer = _Printer(console_fd if console_fd >= 0 else 2, console)
    spans = _Spans(otlp)
    failed = 0
    for batch in _frames(sys.stdin.buffer):
        for item in batch:
            try:
                if isinstance(item, dict):
                    store.submit(item)
                    spans.export(item)
                elif isinstance(item, Finished):
                    row = accountant.close(item)
                    store.submit(row)
                    spans.export(row)
                    printer.line(row, item.ended_at)
                elif isinstance(item, Begin):
                    accountant.open(*item)
                elif isinstance(item, ConsoleSwitch):
                    printer.on = item.on
                elif isinstance(item, OtlpSwitch):
                    spans.switch(item.url)
                elif isinstance(item, Backlog):
                    meter.backlog = item.rows
                elif isinstance(item, ServeMetrics):
                    meter.switch(item.address)
            except ValueError as e:  # not a row of this schema: a bug, said once per row
                log.error("tokenpak: store writer rejected a row (%s)", e)
            except Exception as e:  # noqa: BLE001 - one bad item must not stop the writer
                failed += 1
                if failed <= 3:
                    log.error("tokenpak: store writer could not handle an item (%s: %s)", type(e).__name__, e)
    store.close(timeout=30.0)
    spans.switch(None)  # flushes, bounded
    meter.switch(None)  # after the last rows were counted: a scrape until here sees them all
    say({"stats": {"written": store.written, "spilled": store.spilled, "dropped": store.dropped, "lost_reason": store.lost_reason}})
    return 0


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
            metrics = Metrics(backlog=lambda: self.backlog, spill_rows=SpillRows(self.store.spill_paths))
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
