"""What a workload reports: figures per setup, and the targets they are judged against.

Kept apart from the workloads so the table, the JSON and the targets read one shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["SETUPS", "Metric", "WorkloadResult", "percentile", "ratio", "Target"]

SETUPS = ("direct", "plain", "addon")  # always run, in this order; installed peers (bench/peers) follow

# A target looks at one metric's values and says (met, why).
Target = Callable[[dict[str, float | None]], tuple[bool, str]]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass
class Metric:
    name: str
    unit: str
    values: dict[str, float | None]
    target: str | None = None  # human-readable target, e.g. "addon/plain <= 1.05"
    met: bool | None = None
    note: str = ""

    def judge(self, description: str, check: Target) -> Metric:
        self.target = description
        try:
            self.met, self.note = check(self.values)
        except TypeError:  # a missing value
            self.met, self.note = None, "no data"
        return self

    def to_json(self) -> dict:
        d = asdict(self)
        d["addon_over_plain"] = ratio(self.values.get("addon"), self.values.get("plain"))
        d["addon_over_direct"] = ratio(self.values.get("addon"), self.values.get("direct"))
        for k in self.values:  # a peer's column (bench/peers): addon / that peer
            if k not in SETUPS:
                d[f"addon_over_{k}"] = ratio(self.values.get("addon"), self.values.get(k))
        return d


@dataclass
class WorkloadResult:
    name: str
    description: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    profiles: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)  # setup -> hot functions

    def add(self, name: str, unit: str, values: dict[str, float | None]) -> Metric:
        m = Metric(name, unit, values)
        self.metrics.append(m)
        return m

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "seconds": round(self.seconds, 2),
                "metrics": [m.to_json() for m in self.metrics], "notes": self.notes,
                "profiles": {k: [{"function": f, "inclusive_pct": round(i, 1), "self_pct": round(o, 1)} for f, i, o in v]
                             for k, v in self.profiles.items()}}
