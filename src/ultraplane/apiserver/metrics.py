"""/metrics: kube-apiserver's request metrics, exposed through prometheus-client.

The hot path only bumps plain dict counters (a few hundred nanoseconds); prometheus-client turns
them into families when /metrics is scraped, through custom collectors (``RequestMetrics`` here,
``FlowControl.collect`` in flowcontrol.py). Names, label names and buckets are kube-apiserver's.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

DURATION_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30,
                    45, 60)
VERB_LABELS = {"list": "LIST", "watch": "WATCH", "get": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
               "delete": "DELETE", "deletecollection": "DELETE"}
# label names in the order kube's Go client writes them (sorted)
DURATION_LABELS = ["component", "dry_run", "group", "resource", "scope", "subresource", "verb", "version"]
CONTENT_TYPE = CONTENT_TYPE_LATEST


class RequestLike(Protocol):
    verb: str
    group: str
    version: str
    namespace: str
    resource: str
    name: str
    subresource: str


class Histogram:
    """Per-bucket counts plus sum and count; cumulated only when rendered."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append((format_bound(bound), cumulative))
        out.append(("+Inf", self.count))
        return out


def format_bound(bound: float) -> str:
    return repr(float(bound))


def histogram_family(name: str, doc: str, labels: list[str],
                     series: Iterable[tuple[Iterable[str], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        family.add_metric(list(values), hist.buckets(), hist.total)
    return family


class RequestMetrics(Collector):
    """apiserver_request_total, apiserver_request_duration_seconds, apiserver_current_inflight_requests."""

    def __init__(self) -> None:
        self.inflight = {False: 0, True: 0}
        self.requests: dict[tuple[str, ...], int] = {}
        self.durations: dict[tuple[str, ...], Histogram] = {}

    def observe(self, info: RequestLike | None, code: int, seconds: float, dry_run: bool = False) -> None:
        if info is None:
            labels: tuple[str, ...] = ("apiserver", "", "", "", "", "", "", "")
        else:
            scope = "resource" if info.name else "namespace" if info.namespace else "cluster"
            labels = ("apiserver", "All" if dry_run else "", info.group, info.resource, scope, info.subresource,
                      VERB_LABELS.get(info.verb, info.verb), info.version)
        key = (str(code), *labels)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.durations.get(labels)
        if hist is None:
            hist = self.durations[labels] = Histogram(DURATION_BUCKETS)
        hist.observe(seconds)

    def collect(self) -> Iterator[Any]:
        total = CounterMetricFamily(
            "apiserver_request", "Counter of apiserver requests broken out for each verb, dry run value, group, "
            "version, resource, scope, component, and HTTP response code.", labels=["code", *DURATION_LABELS])
        for key, count in sorted(self.requests.items()):
            total.add_metric(list(key), count)
        yield total
        yield histogram_family(
            "apiserver_request_duration_seconds", "Response latency distribution in seconds for each verb, dry run "
            "value, group, version, resource, subresource, scope and component.", DURATION_LABELS,
            sorted(self.durations.items()))
        inflight = GaugeMetricFamily(
            "apiserver_current_inflight_requests", "Maximal number of currently used inflight request limit of this "
            "apiserver per request kind in last second.", labels=["request_kind"])
        inflight.add_metric(["mutating"], self.inflight[True])
        inflight.add_metric(["readOnly"], self.inflight[False])
        yield inflight


def render(collectors: Iterable[Collector]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
