"""One Prometheus exposition for every worker of a pod (issue 17): a scrape through the shared port reaches one
worker, so its /metrics carries its siblings' samples too, each labelled with the worker that made it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import Metric, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

WORKER_LABEL = "worker"
UNREACHABLE = "voicelog_metrics_worker_unreachable"


@dataclass(frozen=True)
class _Families:
    """A collector of families already made, so prometheus_client renders them (suffixes, escaping, HELP/TYPE)."""

    families: list[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.families


def _parsed(text: str) -> list[Metric] | None:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError:  # a torn answer is a missing one
        return None


def merge_worker_metrics(texts: Mapping[int, str | None]) -> bytes:
    """Every worker's samples with a `worker` label, one HELP/TYPE per family in first-seen order. A worker
    without text (None) or with text that does not parse is left out and is 1 in `UNREACHABLE`."""
    merged: dict[str, Metric] = {}
    missing: dict[int, bool] = {}
    for index, text in sorted(texts.items()):
        families = None if text is None else _parsed(text)
        missing[index] = families is None
        for family in families or []:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            label = str(index)
            into.samples.extend(s._replace(labels={**s.labels, WORKER_LABEL: label}) for s in family.samples)
    unreachable = GaugeMetricFamily(
        UNREACHABLE, "1 for a worker of this pod whose metrics this scrape could not fetch (its samples are "
        "missing from it), 0 for one that answered.", labels=[WORKER_LABEL])
    for index, absent in missing.items():
        unreachable.add_metric([str(index)], 1.0 if absent else 0.0)
    return generate_latest(_Families([*merged.values(), unreachable]))
