"""Instance types a simulated node can be, with the capacities AWS publishes for them.

`max_pods` is the ENI-based limit of the EKS AMI (eni-max-pods.txt: ENIs × (IPv4 per ENI − 1) + 2).
Allocatable follows the EKS AMI's kube-reserved formulas (cpu by cores, memory 255Mi + 11Mi per pod,
1Gi ephemeral storage) and the kubelet's default hard eviction threshold (memory.available 100Mi).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB_KI = 1024 * 1024
ROOT_VOLUME_GIB = 100  # the simulated root EBS volume
EVICTION_HARD_MEMORY_MI = 100


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: int
    max_pods: int
    gpus: int = 0
    gpu_product: str = ""
    neuron_devices: int = 0  # AWS Trainium/Inferentia accelerators (aws.amazon.com/neuron)
    arch: str = "amd64"

    def reserved_cpu_millis(self) -> int:
        """EKS AMI kube-reserved cpu: 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% above."""
        millis = 0.0
        for core in range(self.vcpus):
            millis += 60 if core == 0 else 10 if core == 1 else 5 if core < 4 else 2.5
        return int(millis)

    def reserved_memory_mi(self) -> int:
        return 255 + 11 * self.max_pods

    def capacity(self) -> dict[str, str]:
        cap = {"cpu": str(self.vcpus), "memory": f"{self.memory_gib * GIB_KI}Ki", "pods": str(self.max_pods),
               "ephemeral-storage": f"{ROOT_VOLUME_GIB * GIB_KI}Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
        if self.gpus:
            cap["nvidia.com/gpu"] = str(self.gpus)
        if self.neuron_devices:
            cap["aws.amazon.com/neuron"] = str(self.neuron_devices)
            cap["aws.amazon.com/neuroncore"] = str(self.neuron_devices * 2)
        return cap

    def allocatable(self) -> dict[str, str]:
        alloc = self.capacity()
        alloc["cpu"] = f"{self.vcpus * 1000 - self.reserved_cpu_millis()}m"
        memory_ki = self.memory_gib * GIB_KI - (self.reserved_memory_mi() + EVICTION_HARD_MEMORY_MI) * 1024
        alloc["memory"] = f"{memory_ki}Ki"
        # 1Gi kube-reserved and the 10% nodefs.available eviction threshold
        storage_bytes = ROOT_VOLUME_GIB * GIB_KI * 1024
        alloc["ephemeral-storage"] = str(int(storage_bytes * 0.9) - 1024 ** 3)
        return alloc


INSTANCE_TYPES: dict[str, InstanceType] = {t.name: t for t in [
    InstanceType("m5.large", 2, 8, 29),
    InstanceType("m5.xlarge", 4, 16, 58),
    InstanceType("m5.2xlarge", 8, 32, 58),
    InstanceType("m5.4xlarge", 16, 64, 234),
    InstanceType("c5.2xlarge", 8, 16, 58),
    InstanceType("c5.4xlarge", 16, 32, 234),
    InstanceType("r5.2xlarge", 8, 64, 58),
    InstanceType("m6g.xlarge", 4, 16, 58, arch="arm64"),
    InstanceType("g5.xlarge", 4, 16, 58, gpus=1, gpu_product="NVIDIA-A10G"),
    InstanceType("g5.12xlarge", 48, 192, 737, gpus=4, gpu_product="NVIDIA-A10G"),
    InstanceType("g5.48xlarge", 192, 768, 345, gpus=8, gpu_product="NVIDIA-A10G"),
    InstanceType("p4d.24xlarge", 96, 1152, 737, gpus=8, gpu_product="NVIDIA-A100-SXM4-40GB"),
    InstanceType("p5.48xlarge", 192, 2048, 100, gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3"),
    InstanceType("trn1.32xlarge", 128, 512, 247, neuron_devices=16),
]}

# Used when no --node-type is given: mostly general purpose, some compute/memory, a few accelerators.
DEFAULT_MIX: dict[str, float] = {"m5.large": 30, "m5.xlarge": 30, "m5.4xlarge": 15, "c5.2xlarge": 10,
                                 "r5.2xlarge": 5, "g5.xlarge": 5, "p5.48xlarge": 5}


class MixError(ValueError):
    pass


def parse_mix(text: str) -> dict[str, int]:
    """`p5.48xlarge=100,m5.large=900` → exact counts per type."""
    counts: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, number = part.partition("=")
        if name not in INSTANCE_TYPES:
            raise MixError(f"unknown instance type {name!r}; known: {', '.join(sorted(INSTANCE_TYPES))}")
        try:
            count = int(number) if sep else 1
        except ValueError as exc:
            raise MixError(f"bad count {number!r} for {name}") from exc
        if count < 0:
            raise MixError(f"bad count {number!r} for {name}")
        counts[name] = counts.get(name, 0) + count
    return counts


def spread(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` nodes by weight (largest remainder, ties in the order given)."""
    weight_sum = sum(weights.values())
    if total <= 0 or weight_sum <= 0:
        return {}
    exact = {name: total * w / weight_sum for name, w in weights.items()}
    counts = {name: int(x) for name, x in exact.items()}
    short = total - sum(counts.values())
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[:short]:
        counts[name] += 1
    return {name: n for name, n in counts.items() if n}


def node_types(count: int | None, mix: str | None) -> list[InstanceType]:
    """The type of every node, in order: the exact --node-type counts, or --count spread over the mix."""
    if mix:
        counts = parse_mix(mix)
        if count is not None and count != sum(counts.values()):
            counts = spread(count, {k: float(v) for k, v in counts.items()})
    else:
        counts = spread(3 if count is None else count, DEFAULT_MIX)
    # interleave types so that any prefix of the node list is itself a mix
    ordered: list[InstanceType] = []
    remaining = dict(counts)
    while remaining:
        for name in list(remaining):
            ordered.append(INSTANCE_TYPES[name])
            remaining[name] -= 1
            if not remaining[name]:
                del remaining[name]
    return ordered
