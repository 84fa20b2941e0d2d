"""Bin-packing pending pods into the cheapest set of new nodes.

Pods with the same feasible offerings (NodePool × instance type × zone × capacity type) share nodes.
Within such a group pods are counted by shape (their request vector), so 40,000 replicas of a few
deployments are a handful of (shape, count) pairs. One node at a time: for every feasible type,
first-fit-decreasing fills it from the remaining shapes; the type with the lowest price per value
packed wins (value: the pods' cost at the catalogue's cheapest price per unit of the resource they use
most), ties going to the cheaper node. A fill that can be repeated (shape counts allow) becomes that
many identical nodes at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# request vectors: (cpu millicores, memory bytes, nvidia.com/gpu, pods)
DIMS = 4
Vec = tuple[int, int, int, int]
ZERO: Vec = (0, 0, 0, 0)


def vec_add(a: Vec, b: Vec, times: int = 1) -> Vec:
    return (a[0] + b[0] * times, a[1] + b[1] * times, a[2] + b[2] * times, a[3] + b[3] * times)


def vec_sub(a: Vec, b: Vec) -> Vec:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3])


def fits(need: Vec, room: Vec) -> bool:
    return need[0] <= room[0] and need[1] <= room[1] and need[2] <= room[2] and need[3] <= room[3]


@dataclass(frozen=True)
class Option:
    """One way to launch a node: a NodePool's instance type in a zone and capacity type, at a price."""
    pool: str
    weight: int
    type: str
    zone: str
    capacity_type: str
    price: float
    capacity: Vec  # allocatable less the DaemonSet pods that would run there


@dataclass
class Plan:
    option: Option
    pods: list[str]
    used: Vec
    alternatives: list[Option] = field(default_factory=list)  # same pool, also holds these pods


@dataclass
class Limits:
    """What a NodePool may still launch (spec.limits less what it has); None means unlimited."""
    cpu: int | None = None
    memory: int | None = None
    gpu: int | None = None
    nodes: int | None = None

    def allows(self, capacity: Vec, count: int = 1) -> int:
        """How many nodes of this capacity (up to `count`) still fit under the limits."""
        for limit, each in ((self.cpu, capacity[0]), (self.memory, capacity[1]), (self.gpu, capacity[2])):
            if limit is not None and each > 0:
                count = min(count, limit // each)
        if self.nodes is not None:
            count = min(count, self.nodes)
        return max(0, count)

    def take(self, capacity: Vec, count: int) -> None:
        if self.cpu is not None:
            self.cpu -= capacity[0] * count
        if self.memory is not None:
            self.memory -= capacity[1] * count
        if self.gpu is not None:
            self.gpu -= capacity[2] * count
        if self.nodes is not None:
            self.nodes -= count


@dataclass
class UnitPrices:
    """The catalogue's cheapest $/h per millicore, per byte and per GPU: the lower bound's prices."""
    cpu: float
    memory: float
    gpu: float

    def value(self, shape: Vec) -> float:
        return max(shape[0] * self.cpu, shape[1] * self.memory, shape[2] * self.gpu, 1e-12)


def _fill(room: Vec, shapes: list[Vec], counts: list[int]) -> list[int]:
    taken = [0] * len(shapes)
    r0, r1, r2, r3 = room
    for i, s in enumerate(shapes):
        k = counts[i]
        if not k:
            continue
        if s[0]:
            k = min(k, r0 // s[0])
        if s[1]:
            k = min(k, r1 // s[1])
        if s[2]:
            k = min(k, r2 // s[2])
        if s[3]:
            k = min(k, r3 // s[3])
        if k > 0:
            taken[i] = k
            r0, r1, r2, r3 = r0 - k * s[0], r1 - k * s[1], r2 - k * s[2], r3 - k * s[3]
    return taken


def pack(pods: dict[Vec, list[str]], options: Iterable[Option], prices: UnitPrices,
         limits: dict[str, Limits], max_alternatives: int = 10) -> tuple[list[Plan], list[str]]:
    """Plans for new nodes holding `pods` (shape → pod keys), and the pods no option can hold."""
    shapes = sorted(pods, key=lambda s: (prices.value(s), s), reverse=True)
    queues = {s: list(pods[s]) for s in shapes}
    counts = [len(queues[s]) for s in shapes]
    values = [prices.value(s) for s in shapes]
    # per (pool, type) the cheapest offering: capacity is the same in every zone and capacity type
    cheapest: dict[tuple[str, str], Option] = {}
    by_pool_type: dict[tuple[str, str], list[Option]] = {}
    for opt in options:
        key = (opt.pool, opt.type)
        by_pool_type.setdefault(key, []).append(opt)
        if key not in cheapest or opt.price < cheapest[key].price:
            cheapest[key] = opt
    candidates = sorted(cheapest.values(), key=lambda o: (-o.weight, o.price))
    plans: list[Plan] = []
    while any(counts):
        best: tuple[float, float] | None = None
        choice: tuple[Option, list[int]] | None = None
        top_weight: int | None = None
        for opt in candidates:
            if top_weight is not None and opt.weight < top_weight:
                break  # a heavier NodePool that can take pods wins, as Karpenter orders pools by weight
            if not limits.get(opt.pool, Limits()).allows(opt.capacity):
                continue
            taken = _fill(opt.capacity, shapes, counts)
            value = sum(t * v for t, v in zip(taken, values, strict=True))
            if not value:
                continue
            top_weight = opt.weight
            score = (opt.price / value, opt.price)
            if best is None or score < best:
                best, choice = score, (opt, taken)
        if choice is None:
            break
        opt, taken = choice
        repeat = min(counts[i] // t for i, t in enumerate(taken) if t)
        pool_limits = limits.get(opt.pool)
        if pool_limits is not None:
            repeat = pool_limits.allows(opt.capacity, repeat)
            pool_limits.take(opt.capacity, repeat)
        used = ZERO
        for i, t in enumerate(taken):
            if t:
                used = vec_add(used, shapes[i], t)
        alternatives = sorted((o for (pool, _), opts in by_pool_type.items() if pool == opt.pool
                               for o in opts if fits(used, o.capacity)), key=lambda o: o.price)
        alternatives = [opt, *[o for o in alternatives if o != opt][:max_alternatives - 1]]
        for _ in range(repeat):
            members: list[str] = []
            for i, t in enumerate(taken):
                if t:
                    queue = queues[shapes[i]]
                    members += queue[-t:]
                    del queue[-t:]
                    counts[i] -= t
            plans.append(Plan(opt, members, used, alternatives))
    left = [key for s in shapes for key in queues[s]]
    return plans, left
