"""Bytes per token, calibrated from the input token counts the provider reports (pure, thread-safe).

The planner estimates a prefix's tokens from its JSON bytes. The fixed ratio (3 bytes per token,
`prefix_index.BYTES_PER_TOKEN`) errs high on purpose. Once the provider has reported the prompt
tokens of bodies the proxy saw (Anthropic: input + cache read + cache write tokens), the ratio of
the body's fingerprinted bytes to those tokens is learned per model, as a running mean weighted
by tokens, and a small safety margin (`MARGIN`) keeps it erring high: the estimate only decides
whether a prefix reaches the model's minimum and how much a write or read is worth.
"""
from __future__ import annotations

import threading
from typing import Final

__all__ = ["MARGIN", "TokenCalibration"]

MARGIN: Final = 0.9  # use 90% of the observed bytes/token: estimates stay ~10% high
MIN_TOKENS: Final = 256  # smaller prompts say little about the ratio (fixed overheads dominate)
_LIMITS: Final = (1.0, 8.0)  # bytes per token outside this range is a measurement error


class TokenCalibration:
    """Per-model bytes-per-token learned from (fingerprinted bytes, reported prompt tokens) pairs."""

    def __init__(self, default: float = 3.0) -> None:
        self.default = default
        self._sums: dict[str, tuple[float, float]] = {}  # model -> (bytes, tokens)
        self._lock = threading.Lock()

    def bytes_per_token(self, model: str | None) -> float:
        with self._lock:
            sums = self._sums.get(model or "")
        if sums is None or sums[1] <= 0:
            return self.default
        return max(_LIMITS[0], min(_LIMITS[1], sums[0] / sums[1] * MARGIN))

    def observe(self, model: str | None, prompt_bytes: int, reported_tokens: int | None) -> None:
        """One request whose prompt had `prompt_bytes` fingerprinted bytes and `reported_tokens` tokens."""
        if not reported_tokens or reported_tokens < MIN_TOKENS or prompt_bytes <= 0:
            return
        ratio = prompt_bytes / reported_tokens
        if not _LIMITS[0] <= ratio <= _LIMITS[1]:
            return
        with self._lock:
            b, t = self._sums.get(model or "", (0.0, 0.0))
            self._sums[model or ""] = (b + prompt_bytes, t + reported_tokens)
