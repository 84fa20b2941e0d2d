"""Prometheus metrics under Karpenter's names (karpenter_nodeclaims_created_total, ...), text format."""

from __future__ import annotations

from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histogram: list[int] = [0] * len(BUCKETS)
        self.histogram_sum = 0.0
        self.histogram_count = 0

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += value

    def nodeclaims_created(self, nodepool: str, reason: str) -> None:
        self.inc("karpenter_nodeclaims_created_total", nodepool=nodepool, reason=reason)

    def nodeclaims_launched(self, nodepool: str) -> None:
        self.inc("karpenter_nodeclaims_launched_total", nodepool=nodepool)

    def nodeclaims_terminated(self, nodepool: str) -> None:
        self.inc("karpenter_nodeclaims_terminated_total", nodepool=nodepool)

    def disrupted(self, nodepool: str, reason: str) -> None:
        self.inc("karpenter_nodeclaims_disrupted_total", nodepool=nodepool, reason=reason)

    def decision(self, decision: str, reason: str, consolidation_type: str = "") -> None:
        self.inc("karpenter_voluntary_disruption_decisions_total", decision=decision, reason=reason,
                 consolidation_type=consolidation_type)

    def scheduling_duration(self, seconds: float) -> None:
        self.histogram_sum += seconds
        self.histogram_count += 1
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.histogram[i] += 1

    def nodepool_usage(self, nodepool: str, row: list[int]) -> None:
        for resource, value in zip(("nodes", "cpu", "memory", "pods", "nvidia.com/gpu"), row, strict=False):
            self.gauges["karpenter_nodepools_usage"][(("nodepool", nodepool), ("resource_type", resource))] = value

    def render(self) -> str:
        lines = []
        for name, series in sorted(self.counters.items()):
            lines.append(f"# TYPE {name} counter")
            lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
        for name, series in sorted(self.gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
        name = "karpenter_provisioner_scheduling_duration_seconds"
        lines.append(f"# TYPE {name} histogram")
        lines += [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(BUCKETS, self.histogram, strict=True)]
        lines += [f'{name}_bucket{{le="+Inf"}} {self.histogram_count}', f"{name}_sum {self.histogram_sum:g}",
                  f"{name}_count {self.histogram_count}"]
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"
