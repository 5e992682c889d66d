"""Incremental Content-Encoding decoders for the observer's *copy* of a streamed body.

The client always receives the upstream bytes as sent (compressed or not); only the telemetry
copy is decoded, chunk by chunk, so compressed SSE is measured without buffering it.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the binding mitmproxy itself depends on before 3.14, so users install only one
    from backports import zstd

__all__ = ["incremental_decoder", "identity", "zstd"]

Decoder = Callable[[bytes], bytes]


def incremental_decoder(encoding: str | None) -> Decoder | None:
    """A chunk -> decoded-bytes function, identity for no encoding, None for an unknown one."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        return identity
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if enc == "deflate":
        return _Deflate()
    if enc == "br":
        import brotli

        process: Callable[[bytes], bytes] = brotli.Decompressor().process
        return process
    if enc == "zstd":
        return _Zstd()
    return None


def identity(data: bytes) -> bytes:
    return data


class _Deflate:
    """HTTP "deflate" is zlib-wrapped in the RFC but raw deflate in the wild; accept both."""

    def __init__(self) -> None:
        self._obj: zlib._Decompress | None = None
        self._pending = b""

    def __call__(self, data: bytes) -> bytes:
        if self._obj is None:
            self._pending += data
            if len(self._pending) < 2:
                return b""
            head = self._pending
            wrapped = (head[0] & 0x0F) == 8 and ((head[0] << 8) | head[1]) % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._pending = head, b""
        return self._obj.decompress(data)


class _Zstd:
    """zstd, frame after frame (a body may hold several concatenated frames)."""

    def __init__(self) -> None:
        self._obj = zstd.ZstdDecompressor()

    def __call__(self, data: bytes) -> bytes:
        out = [self._obj.decompress(data)]
        while self._obj.eof and self._obj.unused_data:
            rest = self._obj.unused_data
            self._obj = zstd.ZstdDecompressor()
            out.append(self._obj.decompress(rest))
        return b"".join(out)
