"""Headless Chromium for the browser tests, driven with command-line flags only (no new deps).

``dump_dom`` returns the DOM after the page's scripts ran (``--virtual-time-budget`` lets a
single-page app such as mitmweb fetch and render); ``screenshot`` writes a PNG that
``png_pixels`` decodes with the standard library, so a test can check that charts were painted.
Every run uses a fresh profile directory and the flags that keep Chromium off the network.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from pathlib import Path

__all__ = ["chromium_executable", "dump_dom", "screenshot", "png_pixels", "MISSING"]

MISSING = "Chromium is not installed: run .ci/deps (installs the 'chromium' system package)"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def chromium_executable() -> str | None:
    for name in (os.environ.get("CHROMIUM") or "", "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = chromium_executable()
    if exe is None:
        raise FileNotFoundError(MISSING)
    with tempfile.TemporaryDirectory(prefix="tokenpak-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(url: str, *, budget_ms: int = 5000, timeout: float = 90.0) -> tuple[str, str]:
    """(serialized DOM, Chromium's log) for ``url``; console messages are in the log."""
    proc = _run(["--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    return proc.stdout, proc.stderr


def screenshot(url: str, png: Path, *, width: int = 1200, height: int = 3000, timeout: float = 90.0) -> str:
    """Writes ``png``; returns Chromium's log."""
    proc = _run([f"--window-size={width},{height}", f"--screenshot={png}", url], timeout)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot: {proc.stderr[-2000:]}")
    return proc.stderr


def png_pixels(png: Path) -> Counter[tuple[int, int, int]]:
    """RGB colour -> pixel count of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    data = png.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, [], 0
    height = color = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            if depth != 8 or color not in (2, 6):
                raise ValueError(f"unsupported PNG: depth {depth}, colour type {color}")
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    counts: Counter[tuple[int, int, int]] = Counter()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        for x in range(0, stride, bpp):
            counts[(line[x], line[x + 1], line[x + 2])] += 1
        prev = line
    return counts
