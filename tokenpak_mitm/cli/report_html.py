"""``tokenpak report --html FILE``: one self-contained page that opens offline.

Charts are inline SVG drawn here (no JavaScript, no CDN, no web font, no external reference of
any kind): the page may be mailed around or opened on an air-gapped machine, and a report must
never phone home. HTML5 places inline ``<svg>`` in the SVG namespace by itself, so no ``xmlns``
attribute (which would be a URL) is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from tokenpak_mitm.cli.report_model import BUCKETS, CACHE_HIT_RATIO_DEFINITION, Report, money, ms, ratio
from tokenpak_mitm.store.files import write_private

__all__ = ["render_html", "write_html", "bar_chart", "line_chart"]

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 72, 12, 16, 44
BUCKET_COLORS = {"input": "#4e79a7", "cache_read": "#59a14f", "cache_write": "#f28e2b", "output": "#b07aa1", "other": "#9c9c9c"}
USD = "${:,.2f}"
ORIGIN_COLORS = {"proxy": "#2f7d32", "client": "#4e79a7", "unknown": "#9c9c9c"}
# "unknown": the provider cached with no marker from anyone (e.g. automatic caching); never the proxy's credit.
ORIGIN_LABELS = {"proxy": "proxy markers", "client": "client markers", "unknown": "no marker (provider)"}


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    color: str
    values: Sequence[float | None]


def _nice_step(span: float, target: int = 4) -> float:
    raw = span / target if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw))


def _axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        hi = lo + 1.0
    step = _nice_step(hi - lo)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    ticks = [lo + i * step for i in range(round((hi - lo) / step) + 1)]
    return lo, hi, ticks


def _tick_format(fmt: str, ticks: list[float]) -> str:
    """Enough decimals that neighbouring ticks differ ($0.001 steps must not all read $0.00)."""
    if fmt != USD or len(ticks) < 2:
        return fmt
    step = ticks[1] - ticks[0]
    decimals = next((d for d in range(2, 12) if abs(round(step, d) - step) < step * 1e-6), 12)
    return "${:,.%df}" % decimals


def _frame(title: str, labels: Sequence[str], lo: float, hi: float, ticks: list[float], fmt: str, body: list[str], legend: Sequence[Series]) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(v: float) -> float:
        return TOP + plot_h * (hi - v) / (hi - lo)

    tick_fmt = _tick_format(fmt, ticks)
    out = [f'<figure><figcaption>{escape(title)}</figcaption>',
           f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">']
    for t in ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="{"zero" if t == 0 else "grid"}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{escape(tick_fmt.format(t))}</text>')
    every = max(1, math.ceil(len(labels) / 12))
    slot = plot_w / max(1, len(labels))
    for i, label in enumerate(labels):
        if i % every == 0:
            out.append(f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{escape(_short(label))}</text>')
    out += body
    x = LEFT
    for s in legend:
        out.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{s.color}"/>')
        out.append(f'<text x="{x + 14}" y="{HEIGHT - 5}">{escape(s.label)}</text>')
        x += 24 + 7 * len(s.label)
    out.append("</svg></figure>")
    return "\n".join(out)


def _short(label: str) -> str:
    """``05-16`` for a day, ``14:00`` for an hour (``05-16`` at midnight)."""
    if len(label) == 10:
        return label[5:]
    if len(label) == 16:
        return label[5:10] if label.endswith("00:00") else label[11:]
    return label


def _exact(fmt: str, v: float) -> str:
    return f"${v:,.6f}" if fmt == USD else fmt.format(v)


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], *, stacked: bool, fmt: str = USD) -> str:
    """Stacked or grouped bars, one slot per label; negative values hang below the zero line."""
    n = len(labels)
    if stacked:
        highs = [sum(max(0.0, s.values[i] or 0.0) for s in series) for i in range(n)]
        lows = [sum(min(0.0, s.values[i] or 0.0) for s in series) for i in range(n)]
    else:
        highs = lows = [v or 0.0 for s in series for v in s.values]
    lo, hi, ticks = _axis(min(lows, default=0.0), max(highs, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, n)

    def y(v: float) -> float:
        return TOP + plot_h * (hi - v) / (hi - lo)

    body = []
    for i, label in enumerate(labels):
        up = down = 0.0
        for j, s in enumerate(series):
            v = s.values[i] or 0.0
            if not v:
                continue
            if stacked:
                x, w = LEFT + slot * (i + 0.15), slot * 0.7
                base = up if v > 0 else down
                top, bottom = (base + v, base) if v > 0 else (base, base + v)
                if v > 0:
                    up += v
                else:
                    down += v
            else:
                w = slot * 0.8 / len(series)
                x = LEFT + slot * (i + 0.1) + w * j
                top, bottom = max(v, 0.0), min(v, 0.0)
            body.append(f'<rect x="{x:.1f}" y="{y(top):.1f}" width="{w:.1f}" height="{max(0.5, y(bottom) - y(top)):.1f}" fill="{s.color}">'
                        f'<title>{escape(label)} {escape(s.label)}: {escape(_exact(fmt, v))}</title></rect>')
    return _frame(title, labels, lo, hi, ticks, fmt, body, series)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], *, lo: float = 0.0, hi: float | None = 1.0,
               fmt: str = "{:.0%}") -> str:
    """Lines with dots; periods without a value break the line instead of pretending 0.

    ``hi=None`` scales the axis to the largest value.
    """
    if hi is None:
        lo, hi, ticks = _axis(lo, max((v for s in series for v in s.values if v is not None), default=1.0))
    else:
        _, _, ticks = _axis(lo, hi)
        ticks = [t for t in ticks if lo <= t <= hi]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(labels))
    body: list[str] = []
    for s in series:
        run: list[tuple[float, float]] = []
        points = [(LEFT + slot * (i + 0.5), TOP + plot_h * (hi - v) / (hi - lo)) if v is not None else None for i, v in enumerate(s.values)]
        for i, p in enumerate([*points, None]):
            v = s.values[i] if i < len(s.values) else None
            if p is not None and v is not None:
                run.append(p)
                body.append(f'<circle cx="{p[0]:.1f}" cy="{p[1]:.1f}" r="3" fill="{s.color}"><title>{escape(labels[i])} {escape(s.label)}: '
                            f'{escape(fmt.format(v))}</title></circle>')
            elif run:
                if len(run) > 1:
                    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                    body.append(f'<polyline points="{pts}" fill="none" stroke="{s.color}" stroke-width="2"/>')
                run = []
    return _frame(title, labels, lo, hi, ticks, fmt, body, series)


MODEL_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")
MAX_MODELS = len(MODEL_COLORS)  # more are summed as "other models"


def _model_series(report: Report, labels: list[str]) -> list[Series]:
    totals: dict[str, float] = {}
    for per_model in report.model_cost.values():
        for m, v in per_model.items():
            totals[m] = totals.get(m, 0.0) + v
    ranked = [m for m, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v]
    top, rest = ranked[:MAX_MODELS], set(ranked[MAX_MODELS:])
    series = [Series(m, MODEL_COLORS[i], [report.model_cost.get(p, {}).get(m) for p in labels]) for i, m in enumerate(top)]
    if rest:
        other = [sum(v for m, v in report.model_cost.get(p, {}).items() if m in rest) or None for p in labels]
        series.append(Series("other models", "#9c9c9c", other))
    return series


def _charts(report: Report) -> str:
    periods = report.periods
    labels = [d.key for d in periods]
    per = "hour" if report.period == "hour" else "day"
    buckets = [*BUCKETS, "other"]
    cost = [Series(b.replace("_", " "), BUCKET_COLORS[b], [d.cost_by_bucket.get(b) for d in periods]) for b in buckets
            if any(d.cost_by_bucket.get(b) for d in periods)]
    savings = [Series(ORIGIN_LABELS.get(o, f"{o} markers"), ORIGIN_COLORS[o], [d.savings_usd.get(o) for d in periods])
               for o in ORIGIN_COLORS if any(d.savings_usd.get(o) for d in periods)]
    charts = [bar_chart(f"Cost per {per} (USD, priced requests) by model", labels, _model_series(report, labels), stacked=True),
              bar_chart(f"Cost per {per} (USD, priced requests) by token bucket", labels, cost, stacked=True),
              line_chart(f"Cache hit ratio per {per}", labels, [Series("cache hit ratio", "#59a14f", [d.cache_hit_ratio for d in periods])])]
    lat = []
    for metric, name, colors in (("ttft", "TTFT", ("#4e79a7", "#a0cbe8")), ("duration", "duration", ("#e15759", "#ff9d9a"))):
        for q, color in zip(("p50", "p95"), colors, strict=True):
            values = [(d.latency(metric) or {}).get(q) for d in periods]
            if any(v is not None for v in values):
                lat.append(Series(f"{name} {q}", color, values))
    if lat:
        charts.append(line_chart(f"Latency per {per} (ms)", labels, lat, hi=None, fmt="{:,.0f}"))
    if savings:
        charts.append(bar_chart(f"Savings per {per} (USD) by who placed the cache markers", labels, savings, stacked=False))
    return "\n".join(charts)


def _table(report: Report) -> str:
    head = ["", "requests", "errors", "no usage", "input", "cache read", "cache write", "output", "cache hit", "cost", "unpriced",
            "saved: proxy", "client", "no marker (provider)", "ttft p50", "p95", "p99", "duration p50", "p95", "p99"]
    rows = []
    groups = [g for g in report.groups if g.requests]
    for s in [*groups, report.totals]:
        k, sv = s.tokens, s.savings_usd
        lat = []
        for metric in ("ttft", "duration"):
            p = s.latency(metric)
            lat += [ms(p[q]) if p else "-" for q in ("p50", "p95", "p99")]
        cells = [s.key, s.requests, s.errors, s.requests - s.requests_with_usage, f"{k['input']:,}", f"{k['cache_read']:,}",
                 f"{k['cache_write']:,}", f"{k['output']:,}", ratio(s.cache_hit_ratio), money(s.cost_usd),
                 s.unpriced_requests, money(sv["proxy"]), money(sv["client"]), money(sv["unknown"]), *lat]
        cls = ' class="total"' if s is report.totals else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    t = report.totals
    states = "".join(f"<tr><td>{escape(k)}</td><td>{n}</td></tr>" for k, n in sorted(t.terminal_states.items(), key=lambda kv: -kv[1]))
    out = (f'<h2>By {escape(report.by)}</h2><div class="wide"><table><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
           + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
           + f"<h2>Terminal states</h2><table><thead><tr><th>state</th><th>requests</th></tr></thead><tbody>{states}</tbody></table>")
    if report.errors:
        errs = "".join(f"<tr><td>{escape(e['terminal_state'])}</td><td>{e['status_code'] or '-'}</td><td>{escape(e['error'] or '-')}</td>"
                       f"<td>{e['requests']}</td></tr>" for e in report.errors[:20])
        out += ("<h2>Requests that did not complete</h2><table><thead><tr><th>state</th><th>status</th><th>error</th><th>requests</th></tr>"
                f"</thead><tbody>{errs}</tbody></table>")
    if t.cache_decisions:
        decisions = "".join(f"<tr><td>{escape(k)}</td><td>{n}</td></tr>" for k, n in sorted(t.cache_decisions.items(), key=lambda kv: -kv[1]))
        out += (f"<h2>Cache markers: {t.markers_inserted} inserted</h2><table><thead><tr><th>planner decision</th><th>requests</th></tr>"
                f"</thead><tbody>{decisions}</tbody></table>")
    if t.proxy_request_ms:
        p = t.proxy_request_ms
        out += (f'<p class="note">Proxy\'s own request-side time (classify, plan, splice): p50 {p["p50"]:.2f} ms, '
                f'p95 {p["p95"]:.2f} ms, max {p["max"]:.2f} ms.</p>')
    return out


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:1.3em;white-space:nowrap}
figure{margin:1.2em 0}figcaption{font-weight:600;margin-bottom:4px}
svg text{font-size:11px;fill:#444}svg .grid{stroke:#eee}svg .zero{stroke:#888}
.wide{overflow-x:auto}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}tr.total{font-weight:600;background:#f6f6f6}
.note{color:#555}
"""


def render_html(report: Report, db: str | None = None, sections: str = "") -> str:
    """The page; ``sections`` is trusted markup placed after the tables (sessions and misses, already escaped)."""
    t = report.totals
    sv = t.savings_usd
    cards = [("requests", str(t.requests)), ("errors", str(t.errors)), ("cost (priced)", money(t.cost_usd)),
             ("unpriced requests", str(t.unpriced_requests)), ("cache hit ratio", ratio(t.cache_hit_ratio)),
             ("saved by proxy markers", money(sv["proxy"])), ("saved by client markers", money(sv["client"]))]
    if sv["unknown"]:  # an all-zero "no marker" card says nothing
        cards.append(("saved, no marker (provider)", money(sv["unknown"])))
    ttft = t.latency("ttft")
    if ttft:
        cards.append(("TTFT p50 / p95", f"{ms(ttft['p50'])} / {ms(ttft['p95'])}"))
    notes = [f"Cache hit ratio = {CACHE_HIT_RATIO_DEFINITION}.",
             "Costs of unpriced requests are unknown and are not counted as zero; rejected requests (4xx) without usage are not billed.",
             "Requests without reported usage are counted as requests but add no tokens.",
             "Savings = cost without prompt caching minus actual cost; negative when cache writes were never read back.",
             "Latency: p50/p95/p99 to three significant digits; TTFT from the request going upstream to its first content, duration to its last byte."]
    window = f"since {report.since}" + (f" until {report.until}" if report.until else "")
    extra = report.filters.describe()
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>tokenpak report</title>',
        f"<style>{_CSS}</style></head><body>",
        f'<h1>tokenpak report</h1><p class="note">{escape(window)}{" · " + escape(extra) if extra else ""} · database {escape(db or "-")}</p>',
        '<div class="cards">' + "".join(f'<div class="card">{escape(k)}<b>{escape(v)}</b></div>' for k, v in cards) + "</div>",
        _charts(report) if report.periods else "<p>No requests in this window.</p>",
        _table(report),
        sections,
        "<h2>How to read this</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>",
        "</body></html>",
    ])


def write_html(report: Report, path: Path, db: str | None = None, sections: str = "") -> None:
    write_private(path, render_html(report, db, sections))  # owner-only, like every file the CLI writes
