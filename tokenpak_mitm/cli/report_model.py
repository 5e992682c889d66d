"""What a report is and how its numbers are written: the values the terminal report, the HTML page
and ``tail`` share (the report is built in ``report.py``, drawn in ``report.py`` and ``report_html.py``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenpak_mitm.core.row import CACHE_ORIGINS as ORIGINS
from tokenpak_mitm.store import query as rq
from tokenpak_mitm.store.query import Filters

__all__ = ["BUCKETS", "CACHE_HIT_RATIO_DEFINITION", "UNKNOWN_COST", "Report", "Summary", "money", "ms", "ratio"]

BUCKETS = ("input", "cache_read", "cache_write", "output")
CACHE_HIT_RATIO_DEFINITION = "cache_read / (input + cache_read + cache_write); input is fresh (uncached) input"


@dataclass(slots=True)
class Summary:
    key: str
    requests: int = 0
    requests_with_usage: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*BUCKETS, "reasoning"), 0))
    priced_requests: int = 0
    unpriced_requests: int = 0  # billable rows whose cost is unknown
    _cost: list[float] = field(default_factory=list)
    _bucket_cost: dict[str, list[float]] = field(default_factory=dict)
    _savings: dict[str, list[float]] = field(default_factory=lambda: {o: [] for o in ORIGINS})
    terminal_states: Counter[str] = field(default_factory=Counter)
    usage_sources: Counter[str] = field(default_factory=Counter)
    cache_decisions: Counter[str] = field(default_factory=Counter)  # the planner's verdicts
    markers_inserted: int = 0
    _proxy_max: float | None = None
    latency_hist: dict[str, Counter[float]] = field(default_factory=dict)  # metric -> rounded ms -> rows

    @property
    def cost_usd(self) -> float | None:
        """Sum of known costs; None when no row was priced (unknown, not free)."""
        return math.fsum(self._cost) if self.priced_requests else None

    @property
    def cost_by_bucket(self) -> dict[str, float]:
        return {b: math.fsum(v) for b, v in self._bucket_cost.items()}

    @property
    def savings_usd(self) -> dict[str, float]:
        return {o: math.fsum(v) for o, v in self._savings.items()}

    @property
    def prompt_tokens(self) -> int:
        return self.tokens["input"] + self.tokens["cache_read"] + self.tokens["cache_write"]

    @property
    def cache_hit_ratio(self) -> float | None:
        total = self.prompt_tokens
        return self.tokens["cache_read"] / total if total else None

    @property
    def errors(self) -> int:
        return self.requests - self.terminal_states.get("completed", 0)

    def merge(self, c: rq.CubeRow) -> None:
        """Add one aggregate row from ``report_query.cube``."""
        self.requests += c.requests
        self.requests_with_usage += c.with_usage
        for k, n in c.tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + n
        self.priced_requests += c.priced
        self.unpriced_requests += c.unpriced
        if c.priced:
            self._cost.append(c.cost)
        for b, v in c.cost_by_bucket.items():
            self._bucket_cost.setdefault(b, []).append(v)
        for o, v in c.savings.items():
            self._savings.setdefault(o, []).append(v)
        self.terminal_states[c.terminal_state] += c.requests
        self.usage_sources[c.usage_source] += c.requests
        if c.cache_decision:
            self.cache_decisions[c.cache_decision] += c.requests
        self.markers_inserted += c.markers_inserted
        if c.proxy_max is not None:
            self._proxy_max = c.proxy_max if self._proxy_max is None else max(self._proxy_max, c.proxy_max)

    def add_latency_counts(self, metric: str, counts: Mapping[float, int]) -> None:
        """Add a rounded value -> count mapping to ``metric``'s histogram (copied, never shared)."""
        hist = self.latency_hist.get(metric)
        if hist is None:
            self.latency_hist[metric] = Counter(counts)  # a copy in C
        else:
            hist.update(counts)

    def latency(self, metric: str) -> dict[str, float] | None:
        """p50/p95/p99 in ms (three significant digits) and n, or None without values."""
        hist = self.latency_hist.get(metric)
        p = rq.percentiles(hist) if hist else None
        return None if p is None or hist is None else {**p, "n": sum(hist.values())}

    @property
    def proxy_request_ms(self) -> dict[str, float] | None:
        """p50 / p95 / max of what the proxy itself added before sending each request upstream."""
        p = self.latency("proxy")
        if p is None or self._proxy_max is None:
            return None
        return {"p50": p["p50"], "p95": p["p95"], "max": self._proxy_max}

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "requests": self.requests,
            "requests_with_usage": self.requests_with_usage,
            "requests_without_usage": self.requests - self.requests_with_usage,
            "tokens": dict(self.tokens),
            "prompt_tokens": self.prompt_tokens,
            "cache_hit_ratio": self.cache_hit_ratio,
            "cost_usd": self.cost_usd,
            "priced_requests": self.priced_requests,
            "unpriced_requests": self.unpriced_requests,
            "cost_by_bucket_usd": self.cost_by_bucket,
            "savings_usd": {**self.savings_usd, "total": math.fsum(self.savings_usd.values())},
            "terminal_states": dict(sorted(self.terminal_states.items())),
            "errors": self.errors,
            "usage_sources": dict(sorted(self.usage_sources.items())),
            "cache_decisions": dict(sorted(self.cache_decisions.items())),
            "markers_inserted": self.markers_inserted,
            "ttft_ms": self.latency("ttft"),
            "duration_ms": self.latency("duration"),
            "proxy_request_ms": self.proxy_request_ms,
        }


@dataclass(slots=True)
class Report:
    by: str
    since: str
    since_ts: float | None
    totals: Summary
    groups: list[Summary]
    periods: list[Summary]  # always per day (or per hour for short windows), for the charts
    period: str = "day"
    filters: Filters = field(default_factory=Filters)
    until: str | None = None
    model_cost: dict[str, dict[str, float]] = field(default_factory=dict)  # period -> model -> priced cost
    unpriced: list[dict[str, Any]] = field(default_factory=list)  # see unpriced_models
    no_cache_facts: list[dict[str, Any]] = field(default_factory=list)  # models planned with cache_facts' fallback assumptions
    errors: list[dict[str, Any]] = field(default_factory=list)  # failed requests by state, status and error type
    breakdown: dict[str, list[Summary]] | None = None  # group key -> its models (--breakdown), costliest first
    timezone: str | None = None  # the IANA name the days, weeks and months are in (None: the system's)



UNKNOWN_COST = "unknown"  # the same word in the terminal, the HTML page and tail


def money(v: float | None) -> str:
    """``$1,234.5678``; a cost under $0.0001 keeps two significant digits (``$0.000045``, never
    ``$0.0000`` for money that was spent)."""
    if v is None:
        return UNKNOWN_COST
    if v and abs(v) < 0.0001:
        return f"${v:.{min(12, 1 - math.floor(math.log10(abs(v))))}f}"
    return f"${v:,.4f}"


def ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f}s" if v >= 10_000 else f"{v:,.0f}ms" if v >= 10 else f"{v:.2f}ms"

