"""One Prometheus exposition for every worker of a pod (issue 17): a scrape through the shared port reaches one
worker, so its /metrics carries its siblings' samples too, each labelled with the worker that made it.

Each worker renders its own samples with its `worker` label (`worker_exposition`), and the worker that was
scraped only regroups the rendered lines by family. It never parses an exposition: prometheus_client's parser
is pure Python, and parsing two workers' texts held the scraped worker's event loop, and every call it relays,
for about 17 ms per scrape (docs/ARCHITECTURE.md, "Metrics of several workers").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily

WORKER_LABEL = "worker"
UNREACHABLE = "voicelog_metrics_worker_unreachable"
END = b"# EOF\n"
"""The last line of a worker's exposition: an answer that does not end with it was torn (a sibling that died or
was cut off mid-answer) and counts as missing. Never part of a scrape's answer."""
_HELP = b"# HELP "
_TYPE = b"# TYPE "


@dataclass(frozen=True)
class _Labelled:
    """A registry's families with one more label on every sample, so prometheus_client renders them (suffixes,
    escaping, HELP/TYPE) as it renders the registry itself."""

    registry: CollectorRegistry
    worker: str

    def collect(self) -> Iterable[Metric]:
        extra = {WORKER_LABEL: self.worker}
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, **extra}) for s in family.samples]
            yield labelled


def worker_exposition(registry: CollectorRegistry, worker: int) -> bytes:
    """This worker's samples, labelled `worker`, ending with `END`: its answer to a sibling, and its own part of
    the scrape it answers."""
    return generate_latest(_Labelled(registry, str(worker))) + END


def _families(text: bytes | None) -> list[tuple[bytes, bytes, bytes]] | None:
    """`(name, HELP and TYPE lines, sample lines)` per family of a worker's exposition, or None if it is missing,
    torn or malformed. Blocks are found by their `# HELP ` line, which prometheus_client writes first for every
    family; every sample line of a block starts with the family's name (a counter's `_total`, a histogram's
    `_bucket`, ...), so a line that does not cannot end up under the wrong family."""
    if text is None or not text.endswith(END):
        return None
    body = text[: -len(END)]
    if not body:
        return []
    if not body.startswith(_HELP):
        return None
    families = []
    for i, part in enumerate(body.split(b"\n" + _HELP)):
        block = part if i == 0 else _HELP + part
        if not block.endswith(b"\n"):
            block += b"\n"  # the newline the split took
        help_end = block.find(b"\n") + 1
        type_end = block.find(b"\n", help_end) + 1
        if not type_end or not block.startswith(_TYPE, help_end):
            return None
        name = block[len(_HELP): block.find(b" ", len(_HELP))]
        samples = block[type_end:]
        if not name or any(not line.startswith(name) for line in samples.splitlines()):
            return None
        families.append((name, block[:type_end], samples))
    return families


def merge_worker_metrics(texts: Mapping[int, bytes | None]) -> bytes:
    """Every worker's exposition (`worker_exposition`; None: it did not answer) as one, one HELP/TYPE per family
    in first-seen order, each family's samples worker by worker. A worker without an answer, or whose answer was
    torn, malformed or disagrees with an earlier worker's on a family's HELP or TYPE, is left out and is 1 in
    `UNREACHABLE`."""
    merged: dict[bytes, list[bytes]] = {}
    missing: dict[int, bool] = {}
    for index, text in sorted(texts.items()):
        families = _families(text)
        # A family whose HELP or TYPE differs from an earlier worker's (a worker on other code) would make the
        # whole scrape one Prometheus refuses: that worker is left out instead.
        if families is not None and any(name in merged and merged[name][0] != head for name, head, _ in families):
            families = None
        missing[index] = families is None
        for name, head, samples in families or []:
            merged.setdefault(name, [head]).append(samples)
    unreachable = GaugeMetricFamily(
        UNREACHABLE, "1 for a worker of this pod whose metrics this scrape could not fetch (its samples are "
        "missing from it), 0 for one that answered.", labels=[WORKER_LABEL])
    for index, absent in missing.items():
        unreachable.add_metric([str(index)], 1.0 if absent else 0.0)
    return b"".join(b"".join(parts) for parts in merged.values()) + generate_latest(_Families([unreachable]))


@dataclass(frozen=True)
class _Families:
    """A collector of families already made."""

    families: list[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.families
