"""``tokenpak report``: what the proxy saw, summed honestly.

Aggregation is a set of pure functions over row dicts (the ``requests`` table's columns), so every
figure is testable without a proxy. Three rules keep the figures honest:

* A NULL cost is *unknown*, never 0: cost sums only priced rows and reports how many billable
  requests are unpriced.
* Rows with ``usage_source = 'absent'`` count as requests but add no tokens (their buckets are
  NULL; treating them as 0 would make them look free and cached-nothing).
* Buckets are exclusive (``input`` is fresh input only), so the cache hit ratio is
  ``cache_read / (input + cache_read + cache_write)``: the share of all prompt tokens served
  from the cache.

Cost is also split per bucket for the HTML chart: each row's recorded cost is apportioned by the
bucket prices of the current table, so the split always sums to the recorded cost.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenpak_mitm.row import CACHE_ORIGINS, TelemetryRow

__all__ = [
    "BUCKETS", "ORIGINS", "GROUPINGS", "Summary", "Report", "parse_since", "load_rows", "summarize",
    "group_key", "build_report", "report_json", "day_of", "add_arguments", "run", "unpriced_models",
]

Row = Mapping[str, Any]
BUCKETS = ("input", "cache_read", "cache_write", "output")
BUCKET_COLUMNS = {"input": "input_tokens", "cache_read": "cache_read_tokens", "cache_write": "cache_write_tokens", "output": "output_tokens"}
ORIGINS = CACHE_ORIGINS
GROUPINGS = ("day", "model", "route", "provider")
CACHE_HIT_RATIO_DEFINITION = "cache_read / (input + cache_read + cache_write); input is fresh (uncached) input"
UnitPrices = Callable[[str | None, str | None], Mapping[str, float] | None]


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
    _proxy_ms: list[float] = field(default_factory=list)  # the proxy's own request-side time

    @property
    def cost_usd(self) -> float | None:
        """Sum of known costs; None when no row was priced (unknown, not free)."""
        return math.fsum(self._cost) if self._cost else None

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

    def add(self, row: Row, unit_prices: UnitPrices) -> None:
        self.requests += 1
        self.terminal_states[row.get("terminal_state") or "unknown"] += 1
        if row.get("cache_decision"):
            self.cache_decisions[row["cache_decision"]] += 1
        self.markers_inserted += row.get("markers_inserted") or 0
        if row.get("proxy_request_ms") is not None:
            self._proxy_ms.append(float(row["proxy_request_ms"]))
        source = row.get("usage_source") or "absent"
        self.usage_sources[source] += 1
        if source != "absent":
            self.requests_with_usage += 1
            for bucket, column in BUCKET_COLUMNS.items():
                self.tokens[bucket] += row.get(column) or 0
            self.tokens["reasoning"] += row.get("reasoning_tokens") or 0
        cost = row.get("cost_usd")
        if cost is None:
            if row.get("billable", 1) != 0:
                self.unpriced_requests += 1
        else:
            self.priced_requests += 1
            self._cost.append(float(cost))
            for bucket, part in split_cost(row, float(cost), unit_prices).items():
                self._bucket_cost.setdefault(bucket, []).append(part)
        savings = row.get("savings_usd")
        if savings is not None:
            self._savings.setdefault(row.get("cache_origin") or "unknown", []).append(float(savings))

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
            "usage_sources": dict(sorted(self.usage_sources.items())),
            "cache_decisions": dict(sorted(self.cache_decisions.items())),
            "markers_inserted": self.markers_inserted,
            "proxy_request_ms": self.proxy_request_ms,
        }

    @property
    def proxy_request_ms(self) -> dict[str, float] | None:
        """p50 / p95 / max of what the proxy itself added before sending each request upstream."""
        if not self._proxy_ms:
            return None
        ordered = sorted(self._proxy_ms)
        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"p50": pick(0.50), "p95": pick(0.95), "max": ordered[-1]}


@dataclass(slots=True)
class Report:
    by: str
    since: str
    since_ts: float | None
    totals: Summary
    groups: list[Summary]
    days: list[Summary]  # always per day, for the charts
    unpriced: list[dict[str, Any]] = field(default_factory=list)  # see unpriced_models


def unpriced_models(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Billable requests left unpriced, by provider, model and reason, most requests first.

    Rows written before schema v3 carry no ``unpriced_reason``: no model, no usage, or else
    ``unknown`` (most often a model the price table did not know then).
    """
    counts: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        if row.get("cost_usd") is not None or row.get("billable", 1) == 0:
            continue
        reason = row.get("unpriced_reason")
        if reason is None:
            reason = "no_model" if not row.get("model") else "no_usage" if (row.get("usage_source") or "absent") == "absent" else "unknown"
        counts[(row.get("provider") or "?", row.get("model") or "?", reason)] += 1
    return [{"provider": p, "model": m, "reason": r, "requests": c}
            for (p, m, r), c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


# -- pricing weights ----------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def _table_unit_prices(provider: str | None, model: str | None) -> Mapping[str, float] | None:
    """USD per token of each bucket from the current price table; None when not priceable."""
    from tokenpak_mitm.pricing import price
    from tokenpak_mitm.usage import Usage

    if not provider or not model:
        return None
    m = 1_000_000
    probes = {
        "input": Usage(input_tokens=m, output_tokens=0),
        "cache_read": Usage(input_tokens=0, cache_read_tokens=m, output_tokens=0),
        "cache_write": Usage(input_tokens=0, cache_write_tokens=m, output_tokens=0),
        "cache_write_1h": Usage(input_tokens=0, cache_write_tokens=m, cache_write_1h_tokens=m, output_tokens=0),
        "output": Usage(input_tokens=0, output_tokens=m),
    }
    units: dict[str, float] = {}
    for bucket, usage in probes.items():
        cost = price(provider, model, usage).cost_usd
        if cost is None:
            if bucket.startswith("cache_write") and "input" in units:
                # No write price (models that bill no cache writes): priced rows carry none, so the
                # weight never applies; any finite figure keeps the split well defined.
                units[bucket] = units["input"]
                continue
            return None
        units[bucket] = cost / m
    return units


def split_cost(row: Row, cost: float, unit_prices: UnitPrices = _table_unit_prices) -> dict[str, float]:
    """Apportion a row's recorded cost to buckets; ``other`` when the weights are unknown."""
    units = unit_prices(row.get("provider"), row.get("model")) if row.get("usage_source") != "absent" else None
    if units:
        write = row.get("cache_write_tokens") or 0
        write_1h = min(row.get("cache_write_1h_tokens") or 0, write)
        weights = {
            "input": (row.get("input_tokens") or 0) * units["input"],
            "cache_read": (row.get("cache_read_tokens") or 0) * units["cache_read"],
            "cache_write": (write - write_1h) * units["cache_write"] + write_1h * units.get("cache_write_1h", units["cache_write"]),
            "output": (row.get("output_tokens") or 0) * units["output"],
        }
        total = math.fsum(weights.values())
        if total > 0:
            return {b: cost * w / total for b, w in weights.items() if w}
    return {"other": cost} if cost else {}


# -- grouping -----------------------------------------------------------------------------------
def day_of(ts: float) -> str:
    """Local calendar day of a Unix timestamp (users read reports in their own time zone)."""
    return datetime.fromtimestamp(ts).date().isoformat()


def group_key(row: Row, by: str) -> str:
    if by == "day":
        return day_of(float(row["started_at"]))
    column = {"model": "model", "route": "route_class", "provider": "provider"}[by]
    return str(row.get(column) or "(unknown)")


def summarize(rows: Iterable[Row], key: str = "total", unit_prices: UnitPrices = _table_unit_prices) -> Summary:
    summary = Summary(key)
    for row in rows:
        summary.add(row, unit_prices)
    return summary


def _grouped(rows: list[Row], by: str, unit_prices: UnitPrices) -> list[Summary]:
    groups: dict[str, Summary] = {}
    for row in rows:
        k = group_key(row, by)
        groups.setdefault(k, Summary(k)).add(row, unit_prices)
    if by == "day":
        return [groups[k] for k in sorted(groups)]
    return sorted(groups.values(), key=lambda s: (-(s.cost_usd or 0.0), -s.requests, s.key))


def _fill_days(days: list[Summary]) -> list[Summary]:
    """Insert empty days between the first and last, so chart x-axes are real time."""
    if not days:
        return days
    have = {s.key: s for s in days}
    first, last = date.fromisoformat(days[0].key), date.fromisoformat(days[-1].key)
    out = []
    for n in range((last - first).days + 1):
        k = (first + timedelta(days=n)).isoformat()
        out.append(have.get(k) or Summary(k))
    return out


def build_report(rows: Iterable[Row], by: str = "day", since: str = "7d", since_ts: float | None = None,
                 unit_prices: UnitPrices = _table_unit_prices) -> Report:
    rows = list(rows)
    days = _fill_days(_grouped(rows, "day", unit_prices))
    groups = days if by == "day" else _grouped(rows, by, unit_prices)
    return Report(by=by, since=since, since_ts=since_ts, totals=summarize(rows, "total", unit_prices), groups=groups, days=days,
                  unpriced=unpriced_models(rows))


def report_json(report: Report, db: str | None = None) -> dict[str, Any]:
    return {
        "db": db,
        "since": report.since,
        "since_ts": report.since_ts,
        "by": report.by,
        "definitions": {
            "cache_hit_ratio": CACHE_HIT_RATIO_DEFINITION,
            "cost_usd": "sum of priced requests only; unpriced_requests are billable requests of unknown cost",
            "savings_usd": "cost without prompt caching minus actual cost, by who placed the cache markers",
            "tokens": "exclusive buckets; rows with usage_source='absent' add no tokens",
        },
        "totals": report.totals.as_dict(),
        "groups": [g.as_dict() for g in report.groups],
        "unpriced_models": report.unpriced,
        "price_table": {"version": _price_table_version(), "update": _update_hint()},
    }


def _price_table_version() -> str:
    from tokenpak_mitm.pricing import PRICE_TABLE_VERSION

    return PRICE_TABLE_VERSION


def _update_hint() -> str:
    from tokenpak_mitm.pricing import UPDATE_HINT

    return UPDATE_HINT


# -- I/O ----------------------------------------------------------------------------------------
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float | None:
    """``7d``/``24h``/``30m``/``2w``, an ISO date or datetime, or ``all`` -> cutoff timestamp."""
    text = text.strip().lower()
    if text in ("all", ""):
        return None
    m = _SINCE.match(text)
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNIT_SECONDS[m[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--since: expected e.g. 7d, 24h, 30m, 2w, 2026-05-01 or all, not {text!r}") from None


def load_rows(db: str | Path, since_ts: float | None) -> list[TelemetryRow]:
    """Stored rows as ``TelemetryRow``s: reading a column that is not a field raises, never NULL."""
    from tokenpak_mitm.store import connect_readonly

    conn = connect_readonly(db)
    try:
        sql = "SELECT * FROM requests"
        params: tuple[float, ...] = ()
        if since_ts is not None:
            sql, params = sql + " WHERE started_at >= ?", (since_ts,)
        return [TelemetryRow.from_stored(r) for r in conn.execute(sql + " ORDER BY started_at, id", params)]
    finally:
        conn.close()


# -- console ------------------------------------------------------------------------------------
def _money(v: float | None) -> str:
    return "?" if v is None else f"${v:,.4f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _print_tables(report: Report, db: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, width=max(120, Console().width))
    t = report.totals
    console.print(f"[bold]tokenpak report[/] since {escape(report.since)} · {t.requests} requests · db {escape(db)}")
    if not t.requests:
        console.print("No LLM requests recorded in this window (try --since all, or see `tokenpak doctor`).")
        return
    label = {"day": "day", "model": "model", "route": "route class", "provider": "provider"}[report.by]
    groups = [g for g in report.groups if g.requests] if report.by == "day" else report.groups
    tokens = Table(title=f"Tokens by {label}", title_justify="left")
    for col in (label, "requests", "no usage", "input", "cache read", "cache write", "output", "cache hit"):
        tokens.add_column(col, justify="left" if col == label else "right")
    money = Table(title=f"Cost and savings by {label}", title_justify="left")
    for col in (label, "cost", "unpriced", "saved: proxy", "client", "unknown"):
        money.add_column(col, justify="left" if col == label else "right")
    for s, style in [*((g, None) for g in groups), (t, "bold")]:
        k = s.tokens
        tokens.add_row(escape(s.key), str(s.requests), str(s.requests - s.requests_with_usage), f"{k['input']:,}", f"{k['cache_read']:,}",
                       f"{k['cache_write']:,}", f"{k['output']:,}", _ratio(s.cache_hit_ratio), style=style)
        sv = s.savings_usd
        money.add_row(escape(s.key), _money(s.cost_usd), str(s.unpriced_requests), _money(sv["proxy"]), _money(sv["client"]),
                      _money(sv["unknown"]), style=style)
    states = Table(title="Terminal states", title_justify="left")
    states.add_column("state")
    states.add_column("requests", justify="right")
    for state, n in sorted(t.terminal_states.items(), key=lambda kv: -kv[1]):
        states.add_row(escape(state), str(n))
    decisions = Table(title=f"Cache markers: {t.markers_inserted} inserted", title_justify="left")
    decisions.add_column("planner decision")
    decisions.add_column("requests", justify="right")
    for decision, n in sorted(t.cache_decisions.items(), key=lambda kv: -kv[1]):
        decisions.add_row(escape(decision), str(n))
    console.print(tokens, money, states)
    if t.cache_decisions:
        console.print(decisions)
    console.print(f"cache hit = {CACHE_HIT_RATIO_DEFINITION}.")
    if t.proxy_request_ms:
        p = t.proxy_request_ms
        console.print(f"proxy's own request-side time (classify, plan, splice): p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, max {p['max']:.2f} ms.")
    if t.unpriced_requests:
        console.print(f"{t.unpriced_requests} unpriced requests: their cost is unknown and not included above.")
    if report.unpriced:
        from tokenpak_mitm.pricing import UNPRICED_REASONS

        unpriced = Table(title=f"Unpriced requests by model (price table: {_price_table_version()})", title_justify="left")
        for col in ("provider", "model", "requests", "why"):
            unpriced.add_column(col, justify="right" if col == "requests" else "left")
        for item in report.unpriced:
            why = UNPRICED_REASONS.get(item["reason"], item["reason"])
            unpriced.add_row(escape(item["provider"]), escape(item["model"]), str(item["requests"]), escape(why))
        console.print(unpriced)
        if any(i["reason"] in ("unknown_model", "unknown", "no_cache_write_price", "unknown_speed", "unknown_service_tier") for i in report.unpriced):
            console.print(f"To update the price table: {_update_hint()}.")
    if t.requests - t.requests_with_usage:
        console.print(f"{t.requests - t.requests_with_usage} requests reported no usage: counted as requests, not as tokens.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", default="7d", help="window: 7d, 24h, 30m, 2w, an ISO date, or all (default 7d)")
    parser.add_argument("--by", choices=GROUPINGS, default="day", help="group rows by day, model, route (class) or provider")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--db", help="telemetry database (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from tokenpak_mitm.store import default_db_path

    db = str(Path(args.db).expanduser() if args.db else default_db_path())
    try:
        since_ts = parse_since(args.since)
    except ValueError as e:
        print(f"tokenpak report: {e}", file=sys.stderr)
        return 2
    if not Path(db).is_file():
        print(f"tokenpak report: no database at {db} (has the proxy run yet? see `tokenpak doctor`)", file=sys.stderr)
        return 1
    try:
        rows = load_rows(db, since_ts)
    except sqlite3.Error as e:
        print(f"tokenpak report: cannot read {db}: {e}", file=sys.stderr)
        return 1
    report = build_report(rows, by=args.by, since=args.since, since_ts=since_ts)
    if args.html:
        from tokenpak_mitm.report_html import write_html

        write_html(report, Path(args.html).expanduser(), db=db)
        print(f"tokenpak report: wrote {args.html}", file=sys.stderr)
    if args.json:
        json.dump(report_json(report, db), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_tables(report, db)
    return 0
