"""Server-rendered SVG charts for the auditor's pages: geometry computed here, drawn by a template.

Every chart also renders its numbers as a table (screen readers, and anyone who wants the figures).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 44


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    series: int = 0


@dataclass
class Chart:
    """A bar chart (optionally stacked) with a y axis and an optional horizontal limit line."""

    title: str
    description: str
    categories: list[str]
    series: list[str]
    values: list[list[float]]  # values[series][category]
    unit: str = ""
    limit: float | None = None
    limit_label: str = ""
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    limit_y: float | None = None
    width: int = WIDTH
    height: int = HEIGHT

    def __post_init__(self) -> None:
        self._layout()

    @property
    def empty(self) -> bool:
        return not any(v for row in self.values for v in row)

    def _layout(self) -> None:
        n = max(1, len(self.categories))
        totals = [sum(row[i] for row in self.values) for i in range(len(self.categories))]
        top = max([*totals, self.limit or 0, 1]) * 1.1
        plot_w, plot_h = self.width - LEFT - RIGHT, self.height - TOP - BOTTOM
        slot = plot_w / n
        bar_w = max(2.0, slot * 0.7)

        def y_of(value: float) -> float:
            return TOP + plot_h - value / top * plot_h

        for i, category in enumerate(self.categories):
            base = 0.0
            for s, row in enumerate(self.values):
                value = row[i]
                if value <= 0:
                    continue
                y0, y1 = y_of(base), y_of(base + value)
                self.bars.append(Bar(round(LEFT + i * slot + (slot - bar_w) / 2, 1), round(y1, 1),
                                     round(bar_w, 1), round(y0 - y1, 1),
                                     f"{category}: {self.series[s]} {_fmt(value)}{self.unit}", value, s))
                base += value
        step = max(1, n // 8)
        self.x_labels = [(round(LEFT + i * slot + slot / 2, 1), c) for i, c in enumerate(self.categories)
                         if i % step == 0]
        step_value = _tick_step(top / 1.1)
        self.ticks = [(round(y_of(step_value * k), 1), _fmt(step_value * k))
                      for k in range(int(top // step_value) + 1)]
        if self.limit is not None:
            self.limit_y = round(y_of(self.limit), 1)


def _tick_step(highest: float) -> float:
    """A round step giving about four gridlines; whole numbers for small counts."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000):
        if highest / step <= 5:
            return float(step)
    return float(10 ** len(str(int(highest))) / 10)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _day(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def grants_per_day(report: dict[str, Any], days: list[date]) -> Chart:
    approved: Counter[date] = Counter()
    denied: Counter[date] = Counter()
    for grant in report.get("grants", []):
        day = _day(grant.get("decided_at") or grant.get("requested_at"))
        if grant.get("decision") == "approved" and day:
            approved[day] += 1
        elif grant.get("decision") == "denied" and day:
            denied[day] += 1
    return Chart("Grants per day", "Access requests decided each day: approved and denied.",
                 [d.strftime("%m-%d") for d in days], ["approved", "denied"],
                 [[approved[d] for d in days], [denied[d] for d in days]])


APPROVAL_BUCKETS = ((60, "< 1 min"), (300, "1-5 min"), (900, "5-15 min"), (3600, "15-60 min"),
                    (4 * 3600, "1-4 h"), (None, "> 4 h"))


def time_to_approval(report: dict[str, Any]) -> Chart:
    counts = [0] * len(APPROVAL_BUCKETS)
    for grant in report.get("grants", []):
        asked, decided = grant.get("requested_at"), grant.get("decided_at")
        if grant.get("decision") != "approved" or not isinstance(asked, str) or not isinstance(decided, str):
            continue
        waited = (datetime.fromisoformat(decided.replace("Z", "+00:00"))
                  - datetime.fromisoformat(asked.replace("Z", "+00:00"))).total_seconds()
        index = next(i for i, (bound, _) in enumerate(APPROVAL_BUCKETS) if bound is None or waited < bound)
        counts[index] += 1
    return Chart("Time to approval", "How long approved requests waited for their manager.",
                 [label for _, label in APPROVAL_BUCKETS], ["grants"], [[float(c) for c in counts]])


def grant_use(report: dict[str, Any]) -> Chart:
    approved = [g for g in report.get("grants", []) if g.get("decision") == "approved"]
    used = sum(1 for g in approved if g.get("read_count"))
    return Chart("Used and unused grants", "Approved grants under which something was read, and those never used.",
                 ["used", "unused"], ["grants"], [[float(used), float(len(approved) - used)]])


def purge_age_per_region(report: dict[str, Any]) -> list[Chart]:
    """Per region, the oldest recording purged each day, in days, against the retention limit."""
    limit_days = float(report.get("retention_days", 30))
    by_region: dict[str, list[tuple[str, float]]] = {}
    for row in report.get("days", []):
        age = row.get("max_age_at_purge_s")
        by_region.setdefault(str(row.get("region")), []).append(
            (str(row.get("day", ""))[5:], (age or 0) / 86400))
    return [Chart(f"Purge age, {region}", f"Oldest recording purged each day in {region}, in days; the line is "
                  f"the {limit_days:.0f}-day limit.", [d for d, _ in rows], ["max age at purge"],
                  [[a for _, a in rows]], unit=" d", limit=limit_days, limit_label=f"{limit_days:.0f}-day limit")
            for region, rows in sorted(by_region.items())]
