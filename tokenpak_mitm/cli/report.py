"""``tokenpak report``: what the proxy saw, summed honestly.

SQLite does the summing (``report_query``): the report moves aggregate rows, never every request,
into Python. This module turns those aggregates into ``Summary`` values and prints them. Three
rules keep the figures honest:

* A NULL cost is *unknown*, never 0: cost sums only priced rows and reports how many billable
  requests are unpriced. A request the provider rejected (4xx) with no usage is not billed: it
  counts as priced at $0, not as unpriced.
* Rows with ``usage_source = 'absent'`` count as requests but add no tokens (their buckets are
  NULL; treating them as 0 would make them look free and cached-nothing).
* Buckets are exclusive (``input`` is fresh input only), so the cache hit ratio is
  ``cache_read / (input + cache_read + cache_write)``: the share of all prompt tokens served
  from the cache.

Cost is also split per bucket for the HTML chart: each row's recorded cost is apportioned by the
bucket prices of the current table (``split_cost``), so the split always sums to the recorded cost.
Latency (TTFT, duration, the proxy's own time) is given as p50/p95/p99 to three significant digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenpak_mitm.cli.report_model import BUCKETS, CACHE_HIT_RATIO_DEFINITION, UNKNOWN_COST, Report, Summary, money, ms, ratio
from tokenpak_mitm.cli.tables import plural, print_table, report_console
from tokenpak_mitm.core.row import CACHE_ORIGINS
from tokenpak_mitm.store import query as rq
from tokenpak_mitm.store.query import COLUMN_FILTERS, GROUPINGS, Filters

__all__ = [
    "BUCKETS", "ORIGINS", "GROUPINGS", "Summary", "Report", "parse_since", "build_report", "report_json", "add_arguments",
    "add_filter_arguments", "filters_from_args", "run", "split_cost", "unpriced_models",
]

Row = Mapping[str, Any]
ORIGINS = CACHE_ORIGINS
UnitPrices = Callable[[str | None, str | None], Mapping[str, float] | None]
HOURLY_BELOW = 2 * 86400  # windows shorter than this are charted per hour
GROUP_COLUMNS = {"model": "model", "route": "route_class", "provider": "provider"}  # the column each --by reads (day: none)



def unpriced_models(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Billable requests left unpriced, by provider, model and reason, most requests first.

    ``rows`` are stored rows, or aggregates of them carrying a ``requests`` count. Rows written
    before schema v3 carry no ``unpriced_reason``: no model, no usage, or else ``unknown`` (most
    often a model the price table did not know then). Rejected requests (4xx) without usage are
    not billed, so not unpriced.
    """
    from tokenpak_mitm.core.account.telemetry import rejected_unbilled

    counts: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        if row.get("cost_usd") is not None or row.get("billable", 1) == 0:
            continue
        if rejected_unbilled(row.get("status_code"), row.get("usage_source")):
            continue
        reason = row.get("unpriced_reason")
        if reason is None:
            reason = "no_model" if not row.get("model") else "no_usage" if (row.get("usage_source") or "absent") == "absent" else "unknown"
        counts[(row.get("provider") or "?", row.get("model") or "?", reason)] += int(row.get("requests", 1))
    return [{"provider": p, "model": m, "reason": r, "requests": c}
            for (p, m, r), c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def models_without_cache_facts(models: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    """Models the cache-facts table does not name (their requests were planned and diagnosed with the
    provider's fallback assumptions, ``cache_facts.FALLBACK``), most requests first."""
    from tokenpak_mitm.core.plan.cache_facts import facts_for, missing_facts

    out = [{"provider": p, "model": m, "requests": n, "assumed": facts_for(m, p).family}  # type: ignore[arg-type]
           for (p, m), n in models.items() if missing_facts(m, p)]
    return sorted(out, key=lambda d: (-d["requests"], d["provider"], d["model"]))


# -- pricing weights ----------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def _table_unit_prices(provider: str | None, model: str | None) -> Mapping[str, float] | None:
    """USD per token of each bucket from the current price table; None when not priceable."""
    from tokenpak_mitm.core.account.pricing import price
    from tokenpak_mitm.core.observe.usage import Usage

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


# -- building -----------------------------------------------------------------------------------
def _fill_periods(periods: list[Summary], period: str) -> list[Summary]:
    """Insert empty days (hours) between the first and last, so chart x-axes are real time."""
    if not periods:
        return periods
    have = {s.key: s for s in periods}
    out = []
    if period == "day":
        first, last = date.fromisoformat(periods[0].key), date.fromisoformat(periods[-1].key)
        keys = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    else:
        fmt = "%Y-%m-%d %H:00"
        first_h, last_h = datetime.strptime(periods[0].key, fmt), datetime.strptime(periods[-1].key, fmt)
        keys = [(first_h + timedelta(hours=n)).strftime(fmt) for n in range(int((last_h - first_h).total_seconds() // 3600) + 1)]
    for k in keys:
        out.append(have.get(k) or Summary(k))
    return out


def _order(groups: dict[str, Summary], by: str) -> list[Summary]:
    if by in rq.DAY_GROUPS:
        return [groups[k] for k in sorted(groups)]
    return sorted(groups.values(), key=lambda s: (-(s.cost_usd or 0.0), -s.requests, s.key))


def _summary(summaries: dict[str, Summary], key: str) -> Summary:
    found = summaries.get(key)
    if found is None:
        found = summaries[key] = Summary(key)
    return found


def choose_period(conn: sqlite3.Connection, filters: Filters, now: float | None = None) -> tuple[str, float, float]:
    """``hour`` when the window (or, for an open window, the data) spans under two days; and the span."""
    first_last = rq.span(conn, filters)
    if first_last is None:
        return "day", 0.0, 0.0
    lo = filters.since_ts if filters.since_ts is not None else first_last[0]
    hi = filters.until_ts if filters.until_ts is not None else (first_last[1] if filters.since_ts is None else (time.time() if now is None else now))
    return ("hour" if hi - lo < HOURLY_BELOW else "day"), first_last[0], first_last[1]


def build_report(conn: sqlite3.Connection, by: str = "day", since: str = "7d", filters: Filters | None = None,
                 unit_prices: UnitPrices | None = None, period: str | None = None, until: str | None = None,
                 breakdown: bool = False) -> Report:
    """Aggregate the filtered rows of an open database (a connection from ``connect_readonly``).

    ``breakdown``: also sum each group per model (``Report.breakdown``; tokens, cost, savings and
    states: latency is kept per group only)."""
    filters = filters or Filters()
    prices = unit_prices or _table_unit_prices
    chosen, first, last = choose_period(conn, filters)
    period = period or chosen
    offsets = rq.utc_offsets(first, last)
    dialect = rq.dialect_of(conn)
    period_sql = rq.local_period_sql(period, offsets, dialect)
    group_sql = GROUPINGS[by] or rq.local_period_sql("day", offsets, dialect)
    labels: dict[tuple[str, str], str] = {}

    def label(kind: str, number: str) -> str:
        """Day/hour numbers from SQL become ISO labels; other group keys stay as they are."""
        if kind not in ("hour", *rq.DAY_GROUPS):
            return number
        if (kind, number) not in labels:
            labels[kind, number] = rq.period_label(kind, int(number))
        return labels[kind, number]

    group_kind = "day" if by == "day" else by
    totals = Summary("total")
    groups: dict[str, Summary] = {}
    periods: dict[str, Summary] = {}
    model_cost: dict[str, dict[str, float]] = {}
    models: Counter[tuple[str, str]] = Counter()  # (provider, model) -> requests, for the cache-facts check
    group_columns = frozenset() if by in rq.DAY_GROUPS else frozenset({GROUP_COLUMNS.get(by, by)})
    parts: dict[str, dict[str, Summary]] = {}  # --breakdown: group -> model -> sums
    srcs = rq.sources(conn, filters, period, group_columns)
    for c in (c for src in srcs for c in rq.cube(conn, src, group_sql, period_sql, prices)):
        totals.merge(c)
        models[(c.provider or "", c.model)] += c.requests
        c.group, c.period = label(group_kind, c.group), label(period, c.period)
        _summary(groups, c.group).merge(c)
        _summary(periods, c.period).merge(c)
        if breakdown:
            _summary(parts.setdefault(c.group, {}), c.model).merge(c)
        if c.priced:
            by_model = model_cost.setdefault(c.period, {})
            by_model[c.model] = by_model.get(c.model, 0.0) + c.cost
    latency_srcs = rq.sources(conn, filters, period, group_columns, latency=True)
    same = by == "day" and period == "day"
    for (metric, level), per_key in rq.latency_counts(conn, latency_srcs, group_sql, period_sql, same=same).items():
        for key, counts in per_key.items():
            if level == "total":
                totals.add_latency_counts(metric, counts)
                continue
            assert key is not None
            if level == "group":
                totals.add_latency_counts(metric, counts)
                _summary(groups, label(group_kind, key)).add_latency_counts(metric, counts)
            if level == "period" or same:
                _summary(periods, label(period, key)).add_latency_counts(metric, counts)
    ordered_periods = _fill_periods(_order(periods, "day"), period)
    if by == "day" and period == "day":
        ordered_groups = ordered_periods
    else:
        ordered_groups = _order(groups, by)
    errors: Counter[tuple[str, int | None, str | None]] = Counter()
    if totals.errors:
        for src in srcs:
            for state, status, error, n in rq.error_groups(conn, src):
                errors[state, status, error] += n
    error_list = [{"terminal_state": st, "status_code": code, "error": err, "requests": n}
                  for (st, code, err), n in sorted(errors.items(), key=lambda kv: (-kv[1], str(kv[0])))]
    return Report(by=by, since=since, since_ts=filters.since_ts, totals=totals, groups=ordered_groups, periods=ordered_periods,
                  period=period, filters=filters, until=until, model_cost=model_cost,
                  unpriced=unpriced_models(u for src in srcs for u in rq.unpriced_groups(conn, src)) if totals.unpriced_requests else [],
                  errors=error_list, no_cache_facts=models_without_cache_facts(models),
                  breakdown={g: _order(per_model, "model") for g, per_model in parts.items()} if breakdown else None)


def empty_report(by: str = "day", since: str = "7d") -> Report:
    return Report(by=by, since=since, since_ts=None, totals=Summary("total"), groups=[], periods=[])


def report_json(report: Report, db: str | None = None) -> dict[str, Any]:
    return {
        "db": db,
        "since": report.since,
        "since_ts": report.since_ts,
        "until": report.until,
        "until_ts": report.filters.until_ts,
        "filters": {**{k: list(v) for k, v in report.filters.columns}, "errors": report.filters.errors},
        "by": report.by,
        "timezone": report.timezone or local_zone_name(),
        "period": report.period,
        "definitions": {
            "cache_hit_ratio": CACHE_HIT_RATIO_DEFINITION,
            "cost_usd": "sum of priced requests only; unpriced_requests are billable requests of unknown cost; "
                        "rejected requests (4xx) that reported no usage are not billed and count as $0",
            "savings_usd": "cost without prompt caching minus actual cost, by who placed the cache markers",
            "tokens": "exclusive buckets; rows with usage_source='absent' add no tokens",
            "latency_ms": "p50/p95/p99 = sorted[min(n-1, int(q*n))], rounded to three significant digits; "
                          "ttft: request sent to first content; duration: request sent to last byte",
        },
        "totals": report.totals.as_dict(),
        "groups": [{**g.as_dict(), **({"models": [m.as_dict() for m in report.breakdown.get(g.key, [])]} if report.breakdown is not None else {})}
                   for g in report.groups],
        "periods": [p.as_dict() for p in report.periods] if report.by != "day" or report.period != "day" else None,
        "unpriced_models": report.unpriced,
        "models_without_cache_facts": report.no_cache_facts,
        "errors": report.errors,
        "price_table": {"version": _price_table_version(), "update": _update_hint()},
    }


def _price_table_version() -> str:
    from tokenpak_mitm.core.account.pricing import PRICE_TABLE_VERSION

    return PRICE_TABLE_VERSION


def _update_hint() -> str:
    from tokenpak_mitm.core.account.pricing import UPDATE_HINT

    return UPDATE_HINT


# -- arguments ----------------------------------------------------------------------------------
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None, flag: str = "--since") -> float | None:
    """``7d``/``24h``/``30m``/``2w`` (ago), an ISO date or datetime, or ``all`` -> timestamp."""
    text = text.strip().lower()
    if text in ("all", ""):
        return None
    m = _SINCE.match(text)
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNIT_SECONDS[m[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{flag}: expected e.g. 7d, 24h, 30m, 2w, 2026-05-01 or all, not {text!r}") from None


def add_filter_arguments(parser: argparse.ArgumentParser, since_default: str | None = "7d") -> None:
    """The row filters shared by ``report`` and ``tail`` (one per COLUMN_FILTERS entry)."""
    window = f" (default {since_default})" if since_default else ""
    parser.add_argument("--since", default=since_default, help=f"from: 7d, 24h, 30m, 2w (ago), an ISO date or datetime, or all{window}")
    parser.add_argument("--until", default=None, help="up to (excluded): same forms as --since; default now")
    parser.add_argument("--timezone", metavar="ZONE", help="the time zone of days, weeks, months and dates (IANA, e.g. Europe/Berlin; default: local)")
    for f in COLUMN_FILTERS:
        parser.add_argument(f"--{f.name}", action="append", metavar=f.name.upper(), help=f.help)
    parser.add_argument("--errors", action="store_true", help="only requests that did not complete (any state but completed)")


def known_values(conn: sqlite3.Connection | None, name: str) -> list[str]:
    """The values a ``--NAME`` filter can match: the vocabulary (provider, route, state) plus what
    the database holds (every model it has seen)."""
    from typing import get_args

    from tokenpak_mitm.core.plan.cache_facts import Provider
    from tokenpak_mitm.core.row import RouteClass, TerminalState

    vocab = {"provider": get_args(Provider), "route": get_args(RouteClass), "state": get_args(TerminalState)}.get(name, ())
    seen: list[str] = []
    if conn is not None:
        column = next(f.column for f in COLUMN_FILTERS if f.name == name)
        from tokenpak_mitm.store.sqlite import reader_errors

        try:
            seen = [str(v) for (v,) in conn.execute(f"SELECT DISTINCT {column} FROM requests WHERE {column} IS NOT NULL")]
        except reader_errors():
            seen = []
    return sorted(set(vocab) | set(seen), key=lambda v: (v not in vocab, list(vocab).index(v) if v in vocab else 0, v))


def unknown_filter_value(conn: sqlite3.Connection | None, filters: Filters, names: Iterable[str] | None = None) -> str | None:
    """A one-line message for the first filter value that can match nothing (a misspelt
    ``--provider antropic`` silently gave 0 rows): the closest known value and the known ones."""
    import difflib
    from fnmatch import fnmatchcase

    for name, values in filters.columns:
        if names is not None and name not in names:
            continue
        if conn is None and name not in ("provider", "route", "state"):
            continue  # the database could not be read: which models it holds is unknown
        known = known_values(conn, name)
        for value in values:
            if any(c in value for c in "*?[") and any(fnmatchcase(k, value) for k in known):
                continue
            if value in known:
                continue
            close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            listed = ", ".join(known[:12]) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
            where = "" if name in ("provider", "route", "state") else " in this database"
            return f"--{name} {value!r} matches nothing{where}{hint}; known: {listed or 'none yet'}"
    return None


def local_zone_name() -> str:
    """The time zone reports use: ``TZ`` when set (``--timezone`` sets it), else the system's
    (``/etc/localtime``'s IANA name when it is a link into a zoneinfo tree, else its abbreviation)."""
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return time.tzname[0]


def use_timezone(name: str | None) -> None:
    """Make ``name`` (an IANA zone, e.g. Europe/Berlin) this process's local time zone, so every
    day, week, month, hour and ``--since`` date is read in it. Raises ValueError, naming the
    closest zone, for an unknown name."""
    if not name:
        return
    import difflib
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zones = zoneinfo.available_timezones()
        close = difflib.get_close_matches(name, zones, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"--timezone: unknown time zone {name!r}{hint}; an IANA name such as Europe/Berlin, America/New_York or UTC") from None
    if not hasattr(time, "tzset"):
        raise ValueError("--timezone: not supported on this platform (no time.tzset); reports use the system's time zone")
    os.environ["TZ"] = name
    time.tzset()


def filters_from_args(args: argparse.Namespace, now: float | None = None) -> Filters:
    """Raises ValueError with a one-line message for a bad --since/--until/--timezone."""
    use_timezone(getattr(args, "timezone", None))  # first: --since 2026-05-01 is midnight in that zone
    since_ts = parse_since(args.since, now) if args.since else None
    until_ts = parse_since(args.until, now, flag="--until") if args.until else None
    if since_ts is not None and until_ts is not None and until_ts <= since_ts:
        raise ValueError("--until must be later than --since")
    return Filters.of(since_ts, until_ts, errors=args.errors, **{f.name: getattr(args, f.name) for f in COLUMN_FILTERS})


# -- console ------------------------------------------------------------------------------------

def _latency_cells(s: Summary) -> list[str]:
    cells = []
    for metric in ("ttft", "duration"):
        p = s.latency(metric)
        cells += [ms(p["p50"]) if p else "-", ms(p["p95"]) if p else "-", ms(p["p99"]) if p else "-"]
    return cells


def _print_tables(report: Report, db: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = report_console()
    t = report.totals
    window = f"since {report.since}" + (f" until {report.until}" if report.until else "")
    extra = report.filters.describe()
    zone = f" · {escape(report.timezone)}" if report.timezone else ""
    console.print(f"[bold]tokenpak report[/] {escape(window)}{' · ' + escape(extra) if extra else ''} · {plural(t.requests, 'request')}{zone} · db {escape(db)}")
    if not t.requests:
        tries = [*(["--since all"] if report.since != "all" else []), *(["no --until"] if report.until else []),
                 *(["fewer filters"] if extra else []), "`tokenpak doctor`"]
        console.print(f"No LLM requests recorded in this window (try {', '.join(tries[:-1]) + ' or ' if len(tries) > 1 else ''}{tries[-1]}).")
        return
    label = {"day": "day", "model": "model", "route": "route class", "provider": "provider"}.get(report.by, report.by)
    groups = [g for g in report.groups if g.requests]
    tokens = Table(title=f"Tokens by {label}", title_justify="left")
    for col in (label, "requests", "errors", "no usage", "input", "cache read", "cache write", "output", "cache hit"):
        tokens.add_column(col, justify="left" if col == label else "right", no_wrap=col == label)
    money_t = Table(title=f"Cost and savings by {label}", title_justify="left")
    for col in (label, "cost", "unpriced", "saved: proxy", "client", "no marker (provider)"):
        money_t.add_column(col, justify="left" if col == label else "right", no_wrap=col == label)
    latency = Table(title=f"Latency by {label} (ms, three significant digits)", title_justify="left")
    for col in (label, "ttft p50", "p95", "p99", "duration p50", "p95", "p99"):
        latency.add_column(col, justify="left" if col == label else "right", no_wrap=col == label)
    rows: list[tuple[Summary, str | None, str]] = []  # summary, style, key as shown
    for g in groups:
        rows.append((g, None, escape(g.key)))
        if report.breakdown is not None:  # --breakdown: the group's models under it
            rows += [(m, "dim", "  " + escape(m.key)) for m in report.breakdown.get(g.key, []) if m.requests]
    for s, style, key in [*rows, (t, "bold", "total")]:
        k = s.tokens
        tokens.add_row(key, str(s.requests), str(s.errors), str(s.requests - s.requests_with_usage), f"{k['input']:,}",
                       f"{k['cache_read']:,}", f"{k['cache_write']:,}", f"{k['output']:,}", ratio(s.cache_hit_ratio), style=style)
        sv = s.savings_usd
        money_t.add_row(key, money(s.cost_usd), str(s.unpriced_requests), money(sv["proxy"]), money(sv["client"]),
                        money(sv["unknown"]), style=style)
        if style != "dim":
            latency.add_row(key, *_latency_cells(s), style=style)
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
    for table in (tokens, money_t, latency, states):
        print_table(console, table)
    if report.errors:
        errs = Table(title="Requests that did not complete, by status and error type", title_justify="left")
        for col in ("state", "status", "error", "requests"):
            errs.add_column(col, justify="right" if col in ("status", "requests") else "left", overflow="fold" if col == "error" else "ellipsis")
        for e in report.errors[:20]:
            errs.add_row(escape(e["terminal_state"]), str(e["status_code"] or "-"), escape(e["error"] or "-"), str(e["requests"]))
        print_table(console, errs)
    if t.cache_decisions:
        print_table(console, decisions)
    console.print(f"cache hit = {CACHE_HIT_RATIO_DEFINITION}.")
    if t.proxy_request_ms:
        p = t.proxy_request_ms
        console.print(f"proxy's own request-side time (classify, plan, splice): p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, max {p['max']:.2f} ms.")
    if t.unpriced_requests:
        console.print(f"{plural(t.unpriced_requests, 'unpriced request')}: {'its' if t.unpriced_requests == 1 else 'their'} cost is "
                      f"{UNKNOWN_COST} and not included above.")
    if report.unpriced:
        from tokenpak_mitm.core.account.pricing import UNPRICED_REASONS

        unpriced = Table(title=f"Unpriced requests by model (price table: {_price_table_version()})", title_justify="left")
        for col in ("provider", "model", "requests", "why"):
            unpriced.add_column(col, justify="right" if col == "requests" else "left", overflow="fold" if col == "why" else "ellipsis")
        for item in report.unpriced:
            why = UNPRICED_REASONS.get(item["reason"], item["reason"])
            unpriced.add_row(escape(item["provider"]), escape(item["model"]), str(item["requests"]), escape(why))
        print_table(console, unpriced)
        if any(i["reason"] in ("unknown_model", "unknown", "no_cache_write_price", "unknown_speed", "unknown_service_tier") for i in report.unpriced):
            console.print(f"To update the price table: {_update_hint()}.")
    if report.no_cache_facts:
        facts = Table(title="Models without cache facts (planned with the provider's fallback: cache_facts.FALLBACK)", title_justify="left")
        for col in ("provider", "model", "requests", "assumed"):
            facts.add_column(col, justify="right" if col == "requests" else "left", overflow="fold")
        for item in report.no_cache_facts:
            facts.add_row(escape(item["provider"]), escape(item["model"]), str(item["requests"]), escape(item["assumed"]))
        print_table(console, facts)
        console.print("Their minimum cacheable length and TTLs are assumed (docs/caching.md, \"Provider facts\").")
    if t.requests - t.requests_with_usage:
        n = t.requests - t.requests_with_usage
        console.print(f"{plural(n, 'request')} reported no usage: counted as {'a request' if n == 1 else 'requests'}, not as tokens.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_filter_arguments(parser)
    parser.add_argument("--by", choices=(*GROUPINGS, "session", "project"), default="day",
                        help="group rows by day, week (ISO, from Monday), month, model, route (class), provider, session or project")
    parser.add_argument("--breakdown", action="store_true", help="each group's figures per model too (tokens, cost, savings)")
    parser.add_argument("--misses", action="store_true", help="cache misses by cause, ranked by money lost, with their sessions and models")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--db", help="telemetry database (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML page with charts (instead of the terminal tables)")


def _no_unit_prices(provider: str | None, model: str | None) -> None:
    """For the terminal tables, which show no per-bucket cost (cost then splits as ``other``)."""
    return None


def run(args: argparse.Namespace) -> int:
    from tokenpak_mitm.store.dburl import display, is_postgres, scrub
    from tokenpak_mitm.store.postgres import MissingExtra
    from tokenpak_mitm.store.sqlite import connect_reader, default_db_path, has_requests, reader_errors

    db = args.db if args.db and is_postgres(args.db) else str(Path(args.db).expanduser() if args.db else default_db_path())
    shown = display(db)
    try:
        filters = filters_from_args(args)
    except ValueError as e:
        print(f"tokenpak report: {e}", file=sys.stderr)
        return 2
    if not is_postgres(db) and not Path(db).is_file():
        print(f"tokenpak report: no database at {db} (has the proxy run yet? see `tokenpak doctor`)", file=sys.stderr)
        return 1
    from tokenpak_mitm.cli import report_sessions

    session_view = args.by in ("session", "project")
    misses = bool(getattr(args, "misses", False))
    try:
        conn = connect_reader(db)
        try:
            if not has_requests(conn):  # a PostgreSQL database no proxy has written to yet
                print(f"tokenpak report: no telemetry in {shown} yet (has a proxy written to it? see `tokenpak doctor --db ...`)", file=sys.stderr)
                return 1
            bad = unknown_filter_value(conn, filters)
            if bad:
                print(f"tokenpak report: {bad}", file=sys.stderr)
                return 2
            # The terminal tables show no per-hour periods: they are summed per day, so a short
            # window on a busy day reads the daily summaries too (JSON and HTML keep the hours).
            # Nor do they split cost by token bucket: without the unit prices the price table (0.2 s
            # of imports, seconds on a loaded machine) is not loaded at all.
            terminal = not (args.json or args.html)
            report = build_report(conn, by="day" if session_view else args.by, since=args.since or "all", filters=filters, until=args.until,
                                  breakdown=bool(getattr(args, "breakdown", False)), period="day" if terminal else None,
                                  unit_prices=_no_unit_prices if terminal else None)
            report.timezone = local_zone_name()
            # the session and miss views read their own few columns (only when asked for)
            rows = report_sessions.load_rows(conn, filters) if (session_view or misses or args.html) else []
        finally:
            conn.close()
    except MissingExtra as e:
        print(f"tokenpak report: {e}", file=sys.stderr)
        return 1
    except reader_errors() as e:
        print(f"tokenpak report: cannot read {shown}: {scrub(' '.join(str(e).split()), db)}", file=sys.stderr)
        return 1
    db = shown  # from here on the database is only shown
    now = time.time()
    if args.html:
        from tokenpak_mitm.cli.report_html import write_html

        write_html(report, Path(args.html).expanduser(), db=db, sections=report_sessions.html_sections(rows, now))
        print(f"tokenpak report: wrote {args.html}", file=sys.stderr)
    if args.json:
        out = report_json(report, db)
        out.update(report_sessions.views_json(rows, args.by, misses))
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif session_view or misses:
        if session_view:
            report_sessions.print_groups(rows, args.by, now)
        if misses:
            report_sessions.print_misses(rows)
    elif not args.html:  # --html FILE writes the page; the terminal tables are not printed too
        _print_tables(report, db)
    return 0
