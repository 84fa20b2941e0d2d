"""Prometheus metrics under Retina's names (microsoft/retina, networkobservability_*), per pod and workload.

Retina's node-level metrics carry `direction` (forward) and `reason`, `direction` (drop); ours add the
pod's identity (namespace, podname, workload_kind, workload_name, as Retina's pod-level "advanced"
metrics label their context), so `sum by (workload_name)` gives the workload view. Counters are read
from FlowStore's aggregates at scrape time: a scrape costs O(pods), ingestion pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ultraplane.netobs.store import FlowStore

POD_LABELS = ["namespace", "podname", "workload_kind", "workload_name"]


class FlowMetricsCollector(Collector):
    def __init__(self, store: FlowStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        pods = self.store.pods
        # Retina exposes these running totals as gauges named without a _total suffix (a Counter would gain
        # one on exposition), so they are gauges here too and keep Retina's exact names.
        forward_count = _family("networkobservability_forward_count", "Total forwarded packet count",
                                POD_LABELS + ["direction"])
        forward_bytes = _family("networkobservability_forward_bytes", "Total forwarded byte count",
                                POD_LABELS + ["direction"])
        for key, (packets, size) in pods.forward.items():
            forward_count.add_metric(list(key), packets)
            forward_bytes.add_metric(list(key), size)
        drop_count = _family("networkobservability_drop_count", "Total dropped packet count",
                             POD_LABELS + ["direction", "reason"])
        drop_bytes = _family("networkobservability_drop_bytes", "Total dropped byte count",
                             POD_LABELS + ["direction", "reason"])
        for key, (packets, size) in pods.drop.items():
            drop_count.add_metric(list(key), packets)
            drop_bytes.add_metric(list(key), size)
        retransmits = _family("networkobservability_tcp_retransmission_count", "TCP retransmission count",
                              POD_LABELS)
        for key, count in pods.retransmits.items():
            retransmits.add_metric(list(key), count)
        dns_requests = _family("networkobservability_dns_request_count", "DNS request count", POD_LABELS)
        for key, count in pods.dns_requests.items():
            dns_requests.add_metric(list(key), count)
        dns_responses = _family("networkobservability_dns_response_count", "DNS response count",
                                POD_LABELS + ["return_code"])
        for key, count in pods.dns_responses.items():
            dns_responses.add_metric(list(key), count)
        ingested = CounterMetricFamily("netobs_flows_ingested", "Flows taken into the store")
        ingested.add_metric([], self.store.ingested)
        yield from (forward_count, forward_bytes, drop_count, drop_bytes, retransmits, dns_requests,
                    dns_responses, ingested)


def _family(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def registry_for(store: FlowStore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlowMetricsCollector(store))
    return registry
