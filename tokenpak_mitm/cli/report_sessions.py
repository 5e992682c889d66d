"""Sessions, projects and cache misses in reports: ``tokenpak report --by session|project``,
``tokenpak report --misses``, and the HTML page's sessions table and misses section.

Pure aggregation over telemetry rows (the columns of ``sessions.Outcome.columns`` plus
``miss_cost_usd``); ``report.py`` calls in here so the two evolve apart. Money lost to misses is
``miss_cost_usd``: what each request paid above a full read of the prefix it could have read.
Unpriced misses (unknown model) are counted, never taken as $0 lost.
"""

from __future__ import annotations

import html
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokenpak_mitm.store.query import Filters, dialect_of, table_columns, where

__all__ = ["GroupSummary", "MissCause", "group_summaries", "html_sections", "miss_causes", "print_groups", "print_misses", "provider_verdicts", "views_json"]

Row = Mapping[str, Any]
COLUMNS = ("started_at", "session_id", "project", "turn", "model", "cost_usd", "input_tokens", "cache_read_tokens",
           "cache_write_tokens", "cache_miss_reason", "miss_section", "miss_block", "miss_change", "miss_cost_usd",
           "cache_warm_until", "provider_miss_reason", "provider_missed_tokens")
TOP = 5  # sessions and models named per cause
CHANGE_LABELS = {"tools": "tool definitions", "system": "system text", "volatile": "volatile value (date, id)",
                 "history": "history rewritten", "model_params": "model or parameters"}


@dataclass(slots=True)
class GroupSummary:
    key: str
    project: str | None = None
    requests: int = 0
    turns: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    cache_read_tokens: int = 0
    prompt_tokens: int = 0
    misses: int = 0
    miss_cost_usd: float = 0.0
    first_at: float | None = None
    last_at: float | None = None
    warm_until: float | None = None
    models: set[str] = field(default_factory=set)

    def add(self, row: Row) -> None:
        self.requests += 1
        self.turns = max(self.turns, int(row.get("turn") or 0))
        cost = row.get("cost_usd")
        if cost is None:
            self.unpriced += 1
        else:
            self.cost_usd += float(cost)
        read = int(row.get("cache_read_tokens") or 0)
        self.cache_read_tokens += read
        self.prompt_tokens += read + int(row.get("input_tokens") or 0) + int(row.get("cache_write_tokens") or 0)
        if row.get("cache_miss_reason"):
            self.misses += 1
            self.miss_cost_usd += float(row.get("miss_cost_usd") or 0.0)
        at = float(row["started_at"])
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        if self.last_at is None or at >= self.last_at:
            self.last_at = at
            if row.get("cache_warm_until") is not None:
                self.warm_until = float(row["cache_warm_until"])
        if row.get("project") and not self.project:
            self.project = str(row["project"])
        if row.get("model"):
            self.models.add(str(row["model"]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "project": self.project, "requests": self.requests, "turns": self.turns,
            "cost_usd": round(self.cost_usd, 9), "unpriced_requests": self.unpriced,
            "cache_read_tokens": self.cache_read_tokens, "prompt_tokens": self.prompt_tokens,
            "cache_hit_ratio": (self.cache_read_tokens / self.prompt_tokens) if self.prompt_tokens else None,
            "misses": self.misses, "miss_cost_usd": round(self.miss_cost_usd, 9),
            "first_at": self.first_at, "last_at": self.last_at, "warm_until": self.warm_until,
            "models": sorted(self.models),
        }


@dataclass(slots=True)
class MissCause:
    reason: str
    misses: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    sessions: dict[str, float] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    provider: dict[str, int] = field(default_factory=dict)  # the provider's own verdicts on these misses

    def add(self, row: Row) -> None:
        self.misses += 1
        said = row.get("provider_miss_reason")
        if said:
            self.provider[str(said)] = self.provider.get(str(said), 0) + 1
        cost = row.get("miss_cost_usd")
        if cost is None:
            self.unpriced += 1
        else:
            self.cost_usd += float(cost)
        sid = str(row.get("session_id") or "(none)")
        self.sessions[sid] = self.sessions.get(sid, 0.0) + float(cost or 0.0)
        model = str(row.get("model") or "(unknown)")
        self.models[model] = self.models.get(model, 0) + 1
        if row.get("miss_change"):
            block = row.get("miss_block")
            what = CHANGE_LABELS.get(str(row["miss_change"]), str(row["miss_change"]))
            where = f"{what} @ {row.get('miss_section')}" + ("" if block is None else f"[{block}]")
            self.changes[where] = self.changes.get(where, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        top = sorted(self.sessions.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        return {
            "reason": self.reason, "misses": self.misses, "cost_usd": round(self.cost_usd, 9), "unpriced_misses": self.unpriced,
            "sessions": [{"session_id": s, "cost_usd": round(c, 9)} for s, c in top], "session_count": len(self.sessions),
            "models": dict(sorted(self.models.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]),
            "changes": dict(sorted(self.changes.items(), key=lambda kv: (-kv[1], kv[0]))),
            "provider": dict(sorted(self.provider.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def load_rows(conn: sqlite3.Connection, filters: Filters) -> list[dict[str, Any]]:
    """The columns these views read, for the rows the report's filters select (none before schema v6)."""
    have = table_columns(conn)
    if "session_id" not in have:
        return []  # a database from before sessions: nothing to show
    cond, params = where(filters, have, dialect_of(conn))
    present = [c for c in COLUMNS if c in have]  # an older schema lacks the newer columns: None there
    sql = f"SELECT {', '.join(present)} FROM requests{cond} ORDER BY started_at, id"
    blank = dict.fromkeys(COLUMNS)
    return [{**blank, **dict(zip(present, r, strict=True))} for r in conn.execute(sql, params)]


def group_summaries(rows: Iterable[Row], by: str) -> list[GroupSummary]:
    """Per session (``session_id``) or per project; rows without one are grouped as ``(none)``."""
    column = {"session": "session_id", "project": "project"}[by]
    groups: dict[str, GroupSummary] = {}
    for row in rows:
        key = str(row.get(column) or "(none)")
        groups.setdefault(key, GroupSummary(key)).add(row)
    return sorted(groups.values(), key=lambda g: (-g.cost_usd, -g.requests, g.key))


def miss_causes(rows: Iterable[Row]) -> list[MissCause]:
    """Causes ranked by money lost (then by count)."""
    causes: dict[str, MissCause] = {}
    for row in rows:
        reason = row.get("cache_miss_reason")
        if reason:
            causes.setdefault(str(reason), MissCause(str(reason))).add(row)
    return sorted(causes.values(), key=lambda c: (-c.cost_usd, -c.misses, c.reason))


def provider_verdicts(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """The provider's own verdicts (cache diagnostics) in the window: per verdict, how many rows
    carried it and what those rows say (their ``cache_miss_reason``, ``none`` for no miss)."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        said = row.get("provider_miss_reason")
        if not said:
            continue
        entry = found.setdefault(str(said), {"provider_said": str(said), "rows": 0, "row_says": {}})
        entry["rows"] += 1
        ours = str(row.get("cache_miss_reason") or "none")
        entry["row_says"][ours] = entry["row_says"].get(ours, 0) + 1
    return sorted(found.values(), key=lambda d: (-d["rows"], d["provider_said"]))


def views_json(rows: Sequence[Row], by: str | None, misses: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if by in ("session", "project"):
        out[f"by_{by}"] = [g.as_dict() for g in group_summaries(rows, by)]
    if misses:
        out["misses"] = [c.as_dict() for c in miss_causes(rows)]
        out["miss_cost_definition"] = "what each request paid above a full read of the prefix it could have read"
        out["provider_verdicts"] = provider_verdicts(rows)
    return out


def _clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%H:%M")


def _warm(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    return f"warm until {_clock(ts)}" if ts > now else f"cold since {_clock(ts)}"


def print_groups(rows: Sequence[Row], by: str, now: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tokenpak_mitm.cli.tables import print_table, report_console

    table = Table(title=f"By {by}", title_justify="left")
    for name in (by, "project" if by == "session" else "sessions", "requests", "turns", "cost", "hit ratio", "misses", "lost to misses", "cache"):
        table.add_column(name, justify="left" if name in (by, "project", "cache") else "right")
    sessions_per_project: dict[str, set[str]] = {}
    if by == "project":
        for row in rows:
            sessions_per_project.setdefault(str(row.get("project") or "(none)"), set()).add(str(row.get("session_id")))
    for g in group_summaries(rows, by):
        d = g.as_dict()
        ratio = "-" if d["cache_hit_ratio"] is None else f"{d['cache_hit_ratio']:.1%}"
        second = (g.project or "-") if by == "session" else str(len(sessions_per_project.get(g.key, ())))
        table.add_row(escape(g.key), escape(second), str(g.requests), str(g.turns), f"${g.cost_usd:.4f}" + (f" (+{g.unpriced} unpriced)" if g.unpriced else ""),
                      ratio, str(g.misses), f"${g.miss_cost_usd:.4f}", _warm(g.warm_until, now) if by == "session" else "-")
    print_table(report_console(), table)


def print_misses(rows: Sequence[Row]) -> None:
    from rich.table import Table

    from tokenpak_mitm.cli.tables import print_table, report_console

    table = Table(title="Cache misses by cause (money lost = paid above a full read of the expected prefix)", title_justify="left")
    for name in ("cause", "misses", "lost", "top sessions", "models", "what changed", "provider said"):
        table.add_column(name, justify="right" if name in ("misses", "lost") else "left", no_wrap=name in ("cause", "lost"),
                         overflow="fold")
    causes = miss_causes(rows)
    for c in causes:
        d = c.as_dict()
        table.add_row(c.reason, str(c.misses), f"${c.cost_usd:.4f}" + (f" (+{c.unpriced} unpriced)" if c.unpriced else ""),
                      ", ".join(s["session_id"] for s in d["sessions"]), ", ".join(d["models"]),
                      ", ".join(f"{k} x{v}" for k, v in d["changes"].items()) or "-",
                      ", ".join(f"{k} x{v}" for k, v in d["provider"].items()) or "-")
    console = report_console()
    if causes:
        print_table(console, table)  # a list column wraps between its items, never inside a model name
    else:
        console.print("No cache misses diagnosed in this window.")
    verdicts = provider_verdicts(rows)
    if verdicts:
        said = Table(title="The provider's own verdicts (cache diagnostics) and what those rows say", title_justify="left")
        for name in ("provider said", "rows", "the rows say"):
            said.add_column(name, justify="right" if name == "rows" else "left", overflow="fold")
        for v in verdicts:
            said.add_row(v["provider_said"], str(v["rows"]), ", ".join(f"{k} x{n}" for k, n in sorted(v["row_says"].items())))
        print_table(console, said)


def html_sections(rows: Sequence[Row], now: float) -> str:
    """The HTML page's sessions table and misses section (self-contained markup, escaped)."""
    e = html.escape
    parts = ["<h2>Cache misses by cause</h2>"]
    causes = miss_causes(rows)
    if causes:
        parts.append("<table><tr><th>cause</th><th>misses</th><th>lost</th><th>top sessions</th><th>models</th><th>what changed</th><th>provider said</th></tr>")
        for c in causes:
            d = c.as_dict()
            parts.append(
                f"<tr><td>{e(c.reason)}</td><td class=num>{c.misses}</td><td class=num>${c.cost_usd:.4f}</td>"
                f"<td>{e(', '.join(s['session_id'] for s in d['sessions']))}</td><td>{e(', '.join(d['models']))}</td>"
                f"<td>{e(', '.join(f'{k} x{v}' for k, v in d['changes'].items()) or '-')}</td>"
                f"<td>{e(', '.join(f'{k} x{v}' for k, v in d['provider'].items()) or '-')}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No cache misses diagnosed in this window.</p>")
    parts.append("<h2>Sessions</h2><table><tr><th>session</th><th>project</th><th>requests</th><th>turns</th><th>cost</th>"
                 "<th>misses</th><th>lost to misses</th><th>cache</th></tr>")
    for g in group_summaries(rows, "session")[:200]:
        parts.append(
            f"<tr><td>{e(g.key)}</td><td>{e(g.project or '-')}</td><td class=num>{g.requests}</td><td class=num>{g.turns}</td>"
            f"<td class=num>${g.cost_usd:.4f}</td><td class=num>{g.misses}</td><td class=num>${g.miss_cost_usd:.4f}</td>"
            f"<td>{e(_warm(g.warm_until, now))}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)
