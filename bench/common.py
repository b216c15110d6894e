"""Small helpers shared by the bench modules: timing, statistics, the table printer."""

from __future__ import annotations

import os
import statistics
import time

now = time.perf_counter


def pct(values, q: float) -> float:
    """q-th percentile (0..100), linear interpolation; nan for no values."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def med(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def dist(values, scale: float = 1.0, digits: int = 3) -> dict:
    """min / p50 / p90 / p99 / max of values (times scale)."""
    v = [x * scale for x in values]
    if not v:
        return {"n": 0}
    return {"n": len(v), "min": round(min(v), digits), "p50": round(pct(v, 50), digits),
            "p90": round(pct(v, 90), digits), "p99": round(pct(v, 99), digits), "max": round(max(v), digits)}


def r(x, digits: int = 3):
    """Round for JSON; nan/inf become None."""
    if x is None:
        return None
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        return None
    return round(x, digits)


def load() -> float:
    return round(os.getloadavg()[0], 2)


class Table:
    """Prints rows as they are measured: figure, value, goal, verdict."""

    def __init__(self):
        self.rows: list[dict] = []

    def section(self, title: str) -> None:
        print(f"\n== {title} (load avg {load()})", flush=True)

    def row(self, name: str, value, unit: str = "", goal: str | None = None, met: bool | None = None,
            note: str = "") -> None:
        v = "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
        verdict = "" if met is None else ("MET" if met else "MISSED")
        g = f"goal {goal}" if goal else ""
        print(f"  {name:<46} {v:>12} {unit:<6} {g:<14} {verdict:<6} {note}", flush=True)
        self.rows.append({"figure": name, "value": value, "unit": unit, "goal": goal, "met": met, "note": note})
