"""The cloud provider seam, and the simulated cloud that launches ultraplane's simulated nodes.

`CloudProvider` is what a plug-in for a real cloud implements: create an instance for a NodeClaim
(choosing among the offerings it allows, cheapest first, falling back on capacity errors), delete
it, and report interruptions. `SimCloud` runs the instances as kubelets of one NodeSimulator
(ultraplane.nodes) in this process: a launched instance registers its Node, with the NodeClaim's
labels and taints, after the node class's launch latency, then heartbeats and runs its pods.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.nodes import objects
from ultraplane.nodes.ipam import NodeAddresses
from ultraplane.nodes.objects import LEASE_NAMESPACE, Obj
from ultraplane.nodes.sim import TICK, NodeSimulator, SimConfig, SimNode, node_name
from ultraplane.provisioner.catalog import Catalog

log = logging.getLogger("ultraplane.provisioner.cloud")


class InsufficientCapacity(Exception):
    """No offering the NodeClaim allows has capacity (EC2's InsufficientInstanceCapacity)."""


@dataclass(frozen=True)
class Instance:
    provider_id: str
    node_name: str
    instance_type: str
    zone: str
    capacity_type: str
    image_id: str


@dataclass
class LaunchRequest:
    claim: str
    offerings: list[tuple[str, str, str]]  # (type, zone, capacity type), cheapest first
    labels: dict[str, str]
    taints: list[Obj]
    unavailable: set[tuple[str, str, str]]  # the node class's unavailable offerings (simulated ICE)
    latency: float = 1.0


class CloudProvider(Protocol):
    async def create(self, request: LaunchRequest) -> Instance: ...

    async def delete(self, node_name: str) -> None: ...

    def on_interruption(self, handler: Callable[[str], None]) -> None: ...


IMAGE_ID = "ami-0ultraplanesim2023"


class SimCloud:
    """Instances are kubelets of a NodeSimulator added and removed while it runs."""

    def __init__(self, client: KubeClient, catalog: Catalog, cfg: SimConfig | None = None) -> None:
        self.catalog = catalog
        cfg = cfg or SimConfig(region=catalog.region, zones=len(catalog.zones), vpc_cidr="10.128.0.0/9")
        self.sim = DynamicSimulator(client, cfg)
        self.client = client
        self.next_slot: dict[int, int] = {}  # zone number -> next node slot in that zone's subnet
        self.interruption_handlers: list[Callable[[str], None]] = []
        self.registering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.sim.start(register=False)

    async def stop(self) -> None:
        for task in self.registering:
            task.cancel()
        await self.sim.stop()

    def on_interruption(self, handler: Callable[[str], None]) -> None:
        self.interruption_handlers.append(handler)

    async def create(self, request: LaunchRequest) -> Instance:
        for itype, zone, capacity_type in request.offerings:
            if (itype, zone, capacity_type) in request.unavailable or zone not in self.catalog.zones:
                continue
            zone_no = self.catalog.zones.index(zone)
            slot = self.next_slot.get(zone_no, 0)
            self.next_slot[zone_no] = slot + 1
            index = slot * len(self.catalog.zones) + zone_no
            labels = {**request.labels, "node.kubernetes.io/instance-type": itype,
                      "topology.kubernetes.io/zone": zone, "karpenter.sh/capacity-type": capacity_type}
            node = self.sim.add(index, self.catalog.types[itype].shape, zone, labels, request.taints)
            task = asyncio.create_task(self._register_later(node, request.latency))
            self.registering.add(task)
            task.add_done_callback(self.registering.discard)
            return Instance(node.provider_id, node.name, itype, zone, capacity_type, IMAGE_ID)
        raise InsufficientCapacity(f"no capacity for any of {len(request.offerings)} offerings of "
                                   f"NodeClaim {request.claim}")

    async def _register_later(self, node: ProvisionedNode, latency: float) -> None:
        await asyncio.sleep(latency)  # boot time: the Node appears when its kubelet starts
        for attempt in range(6):
            if node.name not in self.sim.by_name:
                return  # deleted before it booted
            try:
                await self.sim.register(node)
                return
            except (ApiError, OSError) as exc:
                log.warning("node %s failed to register (attempt %d): %s", node.name, attempt + 1, exc)
                await asyncio.sleep(0.5 * 2 ** attempt)

    async def delete(self, node_name: str) -> None:
        await self.sim.remove(node_name)

    def interrupt(self, node_name: str) -> None:
        """A spot interruption notice for the instance behind `node_name` (what EventBridge delivers)."""
        for handler in self.interruption_handlers:
            handler(node_name)


class ProvisionedNode(SimNode):
    __slots__ = ("labels", "taints", "provider_id")

    labels: dict[str, str]
    taints: list[Obj]
    provider_id: str


class DynamicSimulator(NodeSimulator):
    """A NodeSimulator whose nodes come and go: heartbeat buckets follow the live node set."""

    def __init__(self, client: KubeClient, cfg: SimConfig) -> None:
        super().__init__(client, [], cfg)
        self.slots = max(1, round(self.cfg.lease_renew_interval / TICK))
        self.buckets: list[set[SimNode]] = [set() for _ in range(self.slots)]

    def add(self, index: int, itype, zone: str, labels: dict[str, str], taints: list[Obj]) -> ProvisionedNode:  # noqa: ANN001
        subnet = self.subnets[self.cfg.zones and index % self.cfg.zones]
        ip = subnet.node_address(index // self.cfg.zones)
        name = node_name(ip, self.cfg.region)
        node = ProvisionedNode(index, name, itype, zone, ip, NodeAddresses(subnet, self.cfg.prefix_delegation))
        node.labels, node.taints = labels, taints
        body = self._node_body(node)
        node.provider_id = body["spec"]["providerID"]
        self.nodes.append(node)
        self.by_name[name] = node
        self.buckets[index % self.slots].add(node)
        return node

    def _node_body(self, node: ProvisionedNode) -> Obj:
        body = objects.node_object(node.name, node.itype, node.zone, self.cfg.region, node.ip, node.index,
                                   self.kubelet_port, self.cfg.kubelet_host, dt.datetime.now(dt.UTC))
        body["metadata"]["labels"].update(node.labels)
        if node.taints:
            body["spec"]["taints"] = node.taints
        return body

    async def register(self, node: SimNode) -> None:
        assert isinstance(node, ProvisionedNode)
        async with node.attach_lock:
            if not node.addresses.blocks:
                await self.cfg.ec2.call()
                node.addresses.attach()
        body = self._node_body(node)
        try:
            created = await self.client.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.code != 409:
                raise
            created = await self.client.patch(f"/api/v1/nodes/{node.name}/status", {"status": body["status"]})
        node.uid = created["metadata"].get("uid", "")
        node.ready_since = objects.rfc3339(dt.datetime.now(dt.UTC))
        node.registered = True
        node.status_due = asyncio.get_running_loop().time() + self.cfg.status_report_interval
        await self.renew_lease(node)
        self.stats.registered += 1

    async def remove(self, name: str) -> None:
        """The instance is terminated: its kubelet stops, its Lease goes (the Node is deleted by the caller)."""
        node = self.by_name.get(name)
        if node is None:
            return
        self.kill(name)
        del self.by_name[name]
        self.buckets[node.index % self.slots].discard(node)
        self.nodes.remove(node)
        for uid in list(node.pods):
            state = self.pods.pop(uid, None)
            if state is not None:
                self.by_key.pop((state.namespace, state.name), None)
                if state.timer is not None:
                    state.timer.cancel()
        try:
            await self.client.delete(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}")
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        slot = 0
        deadline = loop.time()
        while True:
            now = loop.time()
            for node in list(self.buckets[slot]):
                if not node.alive or not node.registered:
                    continue
                if not node.lease_queued:
                    node.lease_queued = True
                    self.queue.put(2, lambda n=node: self.renew_lease(n))
                if now >= node.status_due and not node.status_queued:
                    node.status_due = now + self.cfg.status_report_interval
                    node.status_queued = True
                    self.queue.put(3, lambda n=node: self.post_status(n))
            slot = (slot + 1) % self.slots
            deadline += TICK
            await asyncio.sleep(max(0.0, deadline - loop.time()))
