"""The instance-type catalogue: shapes, prices per region and capacity type, and the labels a type carries.

The shipped file (data/instance_types.json) names its source. Capacity and allocatable come from
ultraplane.nodes.types.InstanceType, so a provisioned node reports exactly what `ultraplane nodes`
would report for the same type (EKS AMI kube-reserved, eviction threshold, ENI max pods).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ultraplane.nodes.types import InstanceType
from ultraplane.scheduler.quantity import parse_resource

ON_DEMAND, SPOT = "on-demand", "spot"
# labels Karpenter's AWS provider puts on nodes; the catalogue is AWS's, so manifests that select on them apply
AWS = "karpenter.k8s.aws"
GPU_RESOURCE = "nvidia.com/gpu"
_SIZE = re.compile(r"^(\d*)x?(nano|micro|small|medium|large|xlarge|metal)$")


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class Offering:
    zone: str
    capacity_type: str
    price: float


@dataclass
class CatalogType:
    shape: InstanceType
    family: str
    size: str
    gpu_name: str = ""
    gpu_manufacturer: str = ""
    gpu_memory_mib: int = 0
    offerings: list[Offering] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    allocatable: dict[str, int] = field(default_factory=dict)  # parsed: cpu in millis, memory in bytes

    @property
    def name(self) -> str:
        return self.shape.name

    def cheapest(self, allowed: set[tuple[str, str]] | None = None) -> Offering | None:
        best = None
        for offer in self.offerings:
            if allowed is not None and (offer.zone, offer.capacity_type) not in allowed:
                continue
            if best is None or offer.price < best.price:
                best = offer
        return best


@dataclass
class Catalog:
    region: str
    zones: list[str]
    types: dict[str, CatalogType]
    source: str

    def price(self, name: str, zone: str, capacity_type: str) -> float:
        for offer in self.types[name].offerings:
            if offer.zone == zone and offer.capacity_type == capacity_type:
                return offer.price
        raise KeyError((name, zone, capacity_type))


def _labels(t: CatalogType) -> dict[str, str]:
    s = t.shape
    category = re.match(r"[a-z]+", t.family)
    generation = re.search(r"\d+", t.family)
    labels = {
        "node.kubernetes.io/instance-type": s.name, "kubernetes.io/arch": s.arch, "kubernetes.io/os": "linux",
        f"{AWS}/instance-family": t.family, f"{AWS}/instance-size": t.size,
        f"{AWS}/instance-category": category.group(0) if category else t.family,
        f"{AWS}/instance-generation": generation.group(0) if generation else "0",
        f"{AWS}/instance-cpu": str(s.vcpus), f"{AWS}/instance-memory": str(s.memory_gib * 1024),
        f"{AWS}/instance-hypervisor": "nitro",
    }
    if s.gpus:
        labels.update({f"{AWS}/instance-gpu-count": str(s.gpus), f"{AWS}/instance-gpu-name": t.gpu_name,
                       f"{AWS}/instance-gpu-manufacturer": t.gpu_manufacturer,
                       f"{AWS}/instance-gpu-memory": str(t.gpu_memory_mib)})
    return labels


def _entry(raw: dict[str, Any], region: str, zones: list[str]) -> CatalogType:
    try:
        gpu = raw.get("gpu") or {}
        shape = InstanceType(raw["name"], int(raw["vcpu"]), int(raw["memoryGiB"]), int(raw["maxPods"]),
                             gpus=int(gpu.get("count", 0)), gpu_product=gpu.get("product", ""),
                             arch=raw.get("arch", "amd64"))
        family, _, size = shape.name.partition(".")
        prices = raw["prices"].get(region)
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"instance type entry {raw.get('name', '?')!r}: bad or missing field {exc}") from exc
    t = CatalogType(shape, family, size, gpu.get("name", ""), gpu.get("manufacturer", ""),
                    int(gpu.get("memoryMiB", 0)))
    for capacity_type, price in (prices or {}).items():
        t.offerings += [Offering(zone, capacity_type, float(price)) for zone in zones]
    t.labels = _labels(t)
    t.allocatable = {k: parse_resource(k, v) for k, v in shape.allocatable().items()}
    return t


def load(region: str = "us-east-1", path: str | Path | None = None) -> Catalog:
    """The shipped catalogue, or the one at `path` (same format); only types priced in `region` are kept."""
    if path is None:
        text = resources.files("ultraplane.provisioner").joinpath("data/instance_types.json").read_text()
    else:
        text = Path(path).read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"instance type catalogue {path}: {exc}") from exc
    regions = doc.get("regions") or {}
    if region not in regions:
        raise CatalogError(f"region {region!r} is not in the catalogue; known: {', '.join(sorted(regions))}")
    zones = list(regions[region].get("zones") or [])
    types = {}
    for raw in doc.get("instanceTypes") or []:
        entry = _entry(raw, region, zones)
        if entry.offerings:
            types[entry.name] = entry
    return Catalog(region, zones, types, doc.get("source", ""))
