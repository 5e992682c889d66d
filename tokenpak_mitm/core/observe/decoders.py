"""Content-Encoding, decoded in one place, incrementally and with a cap on the output (pure).

Every decode the package does goes through here: the observer's *copy* of a streamed response
(the client always receives the upstream bytes as sent), a buffered response body, a request
body that gets cache markers, recordings and the conformance tools. Two promises:

* **Bounded.** No call produces more than the caller's ``max_output`` bytes: a 16 KB zstd
  "bomb" that expands to 512 MiB costs at most the cap in memory (and the CPU to produce it),
  then ``DecodeLimit`` is raised. Compressed input is fed in small slices, so even one slice
  cannot expand far past the cap (zstd and brotli can expand ~30,000x).
* **One clear error.** A corrupt or truncated body raises ``DecodeError`` (a ``ValueError``)
  whose message is one line; callers log it as one line, never a traceback.

zstd comes from ``compression.zstd`` (Python 3.14) or ``backports.zstd``: the binding mitmproxy
itself depends on, so users install one zstd library, not two.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from typing import Protocol

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the binding mitmproxy itself depends on before 3.14, so users install only one
    from backports import zstd

__all__ = [
    "MAX_CHUNK_OUTPUT",
    "DecodeError",
    "DecodeLimit",
    "Decoder",
    "codings",
    "decode_body",
    "deflate_is_zlib",
    "identity",
    "incremental_decoder",
    "zstd",
]

# What one streamed chunk may decode to. Real SSE chunks are a few KiB and text compresses
# ~10x; a chunk that decodes to more is a bomb, and stopping there bounds the event-loop work.
MAX_CHUNK_OUTPUT = 4 * 1024 * 1024
_SLICE = 1024  # compressed bytes fed per step: bounds one step's output (~32 MiB worst case for zstd)
_STEP_OUT = 256 * 1024  # and each step asks the decompressor for at most this much


class DecodeError(ValueError):
    """A corrupt, truncated or unknown encoding (one-line message)."""


class DecodeLimit(DecodeError):
    """The decoded output would exceed the caller's cap (a decompression bomb, or just too big)."""


class Decoder(Protocol):
    def __call__(self, data: bytes) -> bytes: ...


def identity(data: bytes) -> bytes:
    return data


def codings(header: str | None) -> list[str]:
    """The codings of a Content-Encoding header in the order they were applied ("identity" dropped)."""
    return [c.strip().lower() for c in str(header or "").split(",") if c.strip() and c.strip().lower() != "identity"]


def incremental_decoder(encoding: str | None, max_output: int = MAX_CHUNK_OUTPUT) -> Decoder | None:
    """A chunk -> decoded-bytes function that never returns more than ``max_output`` bytes per call
    (``DecodeLimit`` instead); identity for no encoding, None for an unknown or stacked one."""
    found = codings(encoding)
    if not found:
        return identity
    if len(found) > 1:
        return None
    make = _MAKERS.get(found[0])
    return make(max_output) if make is not None else None


def decode_body(data: bytes, encoding: str | None, max_output: int, *, strict: bool = True) -> bytes:
    """A whole body decoded (stacked codings undone in reverse order), at most ``max_output`` bytes.

    ``strict``: a truncated body or trailing garbage is a ``DecodeError``; otherwise a body cut
    short decodes as far as it goes (what a recording of an interrupted stream holds).
    """
    for coding in reversed(codings(encoding)):
        make = _MAKERS.get(coding)
        if make is None:
            raise DecodeError(f"unknown content-encoding {coding!r}")
        decoder = make(max_output)
        out = decoder(data)
        if strict:
            decoder.finish()
        data = out
    return data


def deflate_is_zlib(data: bytes) -> bool:
    """HTTP "deflate" is zlib-wrapped in the RFC but raw deflate in the wild: which one is this?"""
    return len(data) >= 2 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0


class _Bounded:
    """Shared driver: feed slices, collect output, stop at the cap, restart on concatenated frames."""

    def __init__(self, max_output: int) -> None:
        self.max_output = max_output
        self.done = False  # a frame ended and nothing followed (yet)

    def __call__(self, data: bytes) -> bytes:
        out: list[bytes] = []
        total = 0
        view = memoryview(data)
        try:
            for pos in range(0, len(view), _SLICE):
                piece = bytes(view[pos:pos + _SLICE])
                while True:
                    got, more = self._step(piece)
                    piece = b""
                    total += len(got)
                    if total > self.max_output:
                        raise DecodeLimit(f"decoded output exceeds {self.max_output} bytes (compression bomb?)")
                    out.append(got)
                    if not more:
                        break
        except DecodeError:
            raise
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
            raise DecodeError(f"corrupt {self.name} data: {e}") from None
        return b"".join(out)

    name = "encoded"

    def _step(self, data: bytes) -> tuple[bytes, bool]:
        """Decode some of ``data`` (given once); True when more output is waiting without input."""
        raise NotImplementedError

    def finish(self) -> None:
        if not self.done:
            raise DecodeError(f"truncated {self.name} data")


class _Zlib(_Bounded):
    def __init__(self, max_output: int, wbits: int | None, name: str) -> None:
        super().__init__(max_output)
        self.wbits = wbits  # None: decide between zlib-wrapped and raw deflate on the first bytes
        self.name = name
        self._obj: zlib._Decompress | None = None
        self._head = b""
        self._tail = b""

    def _new(self, wbits: int) -> None:
        self._obj = zlib.decompressobj(wbits)

    def _step(self, data: bytes) -> tuple[bytes, bool]:
        if self._obj is None:
            self._head += data
            if self.wbits is None and len(self._head) < 2:
                return b"", False
            self._new(self.wbits if self.wbits is not None else (zlib.MAX_WBITS if deflate_is_zlib(self._head) else -zlib.MAX_WBITS))
            data, self._head = self._head, b""
        assert self._obj is not None
        if self._obj.eof:
            if not data.strip(b"\0"):
                return b"", False
            if self.wbits != 31:
                raise DecodeError(f"trailing data after {self.name} body")
            self._new(31)  # a gzip body may hold several members
            self.done = False
        out = self._obj.decompress(self._tail + data, _STEP_OUT)
        self._tail = self._obj.unconsumed_tail
        if self._obj.eof:
            self.done = True
            rest = self._obj.unused_data
            if rest:
                if self.wbits != 31:
                    if rest.strip(b"\0"):
                        raise DecodeError(f"trailing data after {self.name} body")
                    return out, False
                self._new(31)
                self.done = False
                self._tail = rest
                return out, True
        return out, bool(self._tail)


class _Brotli(_Bounded):
    name = "br"

    def __init__(self, max_output: int) -> None:
        super().__init__(max_output)
        self._obj = brotli.Decompressor()

    def _step(self, data: bytes) -> tuple[bytes, bool]:
        out: bytes = self._obj.process(data, output_buffer_limit=_STEP_OUT)
        self.done = bool(self._obj.is_finished())
        return out, not self._obj.can_accept_more_data()


class _Zstd(_Bounded):
    """zstd, frame after frame (a body may hold several concatenated frames)."""

    name = "zstd"

    def __init__(self, max_output: int) -> None:
        super().__init__(max_output)
        self._obj = zstd.ZstdDecompressor()

    def _step(self, data: bytes) -> tuple[bytes, bool]:
        if self._obj.eof:
            if not data:
                return b"", False
            self._obj = zstd.ZstdDecompressor()
            self.done = False
        out: bytes = self._obj.decompress(data, max_length=_STEP_OUT)
        if self._obj.eof:
            self.done = True
            rest = self._obj.unused_data
            if rest:
                self._obj = zstd.ZstdDecompressor()
                self.done = False
                more, pending = self._step(rest)
                return out + more, pending
            return out, False
        return out, not self._obj.needs_input


_MAKERS: dict[str, Callable[[int], _Bounded]] = {
    "gzip": lambda cap: _Zlib(cap, 31, "gzip"),
    "x-gzip": lambda cap: _Zlib(cap, 31, "gzip"),
    "deflate": lambda cap: _Zlib(cap, None, "deflate"),
    "br": _Brotli,
    "zstd": _Zstd,
}
