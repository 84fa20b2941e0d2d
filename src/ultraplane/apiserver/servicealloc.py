"""Service ClusterIP and NodePort allocation that stays correct with several API servers on one store.

Every allocated IP or port is one reservation key, created with create-if-absent (an etcd txn
comparing the key's mod revision with 0): ``/registry/ranges/serviceips/<ip>`` and ``/registry/ranges/servicenodeports/<port>``.
The store decides who wins, so two API servers can never hand out the same address. We chose per-item keys
over kube's classic RangeAllocation bitmap (one key updated with compare-and-swap) because every
allocation on the bitmap rewrites the same key: concurrent creates on N servers all conflict on it and
retry, while independent keys only collide when two servers pick the same address. It is also the shape
kube itself moved to (KEP-1880: one IPAddress object per allocated IP).

Each reservation's value names its owner (namespace, name, uid). Reservations are released when the
service is deleted, when its create fails after allocation, and when an update stops using them (an
update that changes the type allocates what the new type needs); the repair loop (kube's ClusterIP and
NodePort repair controllers) reserves addresses of stored services that have no reservation and releases
reservations no service uses once they have looked leaked on two consecutive passes (a reservation whose
service create is still in flight must not be taken back).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ultraplane.apiserver import errors
from ultraplane.apiserver.registry import ListOptions, Obj, Registry
from ultraplane.apiserver.storage import Backend, KeyExists, RevisionConflict

log = logging.getLogger("ultraplane.apiserver.servicealloc")

IP_PREFIX = b"/registry/ranges/serviceips/"
PORT_PREFIX = b"/registry/ranges/servicenodeports/"
NODE_PORT_RANGE = (30000, 32767)  # kube's default --service-node-port-range
REPAIR_INTERVAL_S = 60.0


class Reservations:
    """One kind of reservation key (IPs or ports) in the store that holds the services."""

    def __init__(self, backend: Backend, prefix: bytes, size: int, value_at: Callable[[int], str]) -> None:
        self.backend = backend
        self.prefix = prefix
        self.size = size  # how many values can be allocated; value_at(i) is the i-th (no list: a /12 is 1M IPs)
        self.value_at = value_at
        self.known_taken: set[str] = set()  # a hint only: the store decides

    def key(self, value: str) -> bytes:
        return self.prefix + value.encode()

    async def reserve(self, value: str, owner: Obj) -> bool:
        """Create the reservation if absent; False when someone holds it already."""
        try:
            await self.backend.create(self.key(value), orjson.dumps(owner))
        except KeyExists:
            self.known_taken.add(value)
            return False
        self.known_taken.add(value)
        return True

    async def reserve_any(self, owner: Obj) -> str | None:
        """A free value: probe from a random offset so concurrent servers rarely try the same one."""
        if self.size <= 0:
            return None
        start = random.randrange(self.size)
        for rounds in range(2):
            for i in range(self.size):
                value = self.value_at((start + i) % self.size)
                if rounds == 0 and value in self.known_taken:
                    continue
                if await self.reserve(value, owner):
                    return value
            self.known_taken.clear()  # the hint may be stale (releases by other servers): probe everything
        return None

    async def release(self, value: str, uid: str | None = None) -> None:
        """Delete the reservation (only if ``uid`` owns it, when given)."""
        self.known_taken.discard(value)
        _, stored = await self.backend.get(self.key(value))
        if stored is None:
            return
        if uid is not None and orjson.loads(stored.value).get("uid") != uid:
            return
        try:
            await self.backend.delete(self.key(value), stored.mod_revision)
        except RevisionConflict:
            pass

    async def held(self) -> dict[str, int]:
        """Reserved value -> mod revision of its key."""
        out: dict[str, int] = {}
        start = b""
        while True:
            page = await self.backend.list(self.prefix, start=start, limit=1000)
            for item in page.items:
                out[item.key[len(self.prefix):].decode()] = item.mod_revision
            if not page.more or not page.items:
                return out
            start = page.items[-1].key + b"\0"


def owner_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "uid": meta.get("uid", "")}


def wants_cluster_ip(spec: Obj) -> bool:
    return spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None"


def wants_node_ports(spec: Obj) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


def ips_of(obj: Obj) -> list[str]:
    spec = obj.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [ip for ip in ips if ip and ip != "None"]


def node_ports_of(obj: Obj) -> list[str]:
    return [str(p["nodePort"]) for p in (obj.get("spec") or {}).get("ports") or [] if p.get("nodePort")]


class ServiceAllocator:
    def __init__(self, registry: Registry, cidr: str, node_ports: tuple[int, int] = NODE_PORT_RANGE) -> None:
        self.registry = registry
        self.services = registry.strategies[("", "v1", "services")]
        self.network = ipaddress.ip_network(cidr)
        self.node_port_range = node_ports
        backend = registry.backend_for(self.services)
        # hosts exclude the network and broadcast addresses; the first host is the kubernetes service's
        # (bootstrap asks for it explicitly), so automatic allocation starts at the second
        first_auto = int(self.network.network_address) + 2
        hosts = max(self.network.num_addresses - 2, 0)
        self.ips = Reservations(backend, IP_PREFIX, max(hosts - 1, 0),
                                lambda i: str(ipaddress.ip_address(first_auto + i)))
        self.ports = Reservations(backend, PORT_PREFIX, node_ports[1] - node_ports[0] + 1,
                                  lambda i: str(node_ports[0] + i))
        self._suspects: dict[tuple[str, str], int] = {}  # (kind, value) -> mod revision seen leaked last pass

    # ---------------------------------------------------------------- admission on create
    async def allocate(self, obj: Obj) -> Callable[[], Awaitable[None]]:
        """Reserve the service's ClusterIP and NodePorts; returns the undo for a create that fails later."""
        spec = obj.setdefault("spec", {})
        name = obj["metadata"].get("name", "")
        owner = owner_of(obj)
        taken: list[tuple[Reservations, str]] = []

        async def undo() -> None:
            for reservations, value in taken:
                await reservations.release(value, owner["uid"])

        try:
            if wants_cluster_ip(spec):
                taken.append((self.ips, await self.allocate_ip(spec, name, owner)))
            if wants_node_ports(spec):
                for value in await self.allocate_node_ports(spec, name, owner):
                    taken.append((self.ports, value))
        except BaseException:
            await undo()
            raise
        return undo

    async def allocate_ip(self, spec: Obj, name: str, owner: Obj) -> str:
        wanted = spec.get("clusterIP") or ((spec.get("clusterIPs") or [""])[0])
        if wanted:
            self.check_ip(wanted, name)
            if not await self.ips.reserve(wanted, owner):
                raise ip_error(name, wanted, "provided IP is already allocated")
            ip = wanted
        else:
            found = await self.ips.reserve_any(owner)
            if found is None:
                raise errors.ApiError(errors.status(
                    500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: range is full"))
            ip = found
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        return ip

    def check_ip(self, wanted: str, name: str) -> None:
        try:
            inside = ipaddress.ip_address(wanted) in self.network
        except ValueError:
            return  # field validation reports a malformed IP
        if not inside:
            raise ip_error(name, wanted, f"the provided IP ({wanted}) is not in the valid range. The range of "
                                         f"valid IPs is {self.network}")

    async def allocate_node_ports(self, spec: Obj, name: str, owner: Obj, held: frozenset[str] = frozenset()
                                  ) -> list[str]:
        """Reserve the ports' nodePorts (explicit ones, then automatic ones); ``held``: already this service's."""
        low, high = self.node_port_range
        causes: list[Obj] = []
        got: list[str] = []
        ports = spec.get("ports") or []
        for i, port in enumerate(ports):  # explicit ports first, so automatic ones cannot take them
            wanted = port.get("nodePort")
            if not wanted or str(wanted) in held:
                continue
            if not isinstance(wanted, int) or not low <= wanted <= high:
                causes.append(port_cause(i, wanted, f"provided port is not in the valid range. The range of valid "
                                                    f"ports is {low}-{high}"))
            elif str(wanted) in got:
                continue  # the same port for two protocols is one reservation, as in kube
            elif await self.ports.reserve(str(wanted), owner):
                got.append(str(wanted))
            else:
                causes.append(port_cause(i, wanted, "provided port is already allocated"))
        if causes:
            for value in got:
                await self.ports.release(value, owner["uid"])
            raise errors.invalid("Service", "", name, causes)
        for port in ports:
            if not port.get("nodePort"):
                found = await self.ports.reserve_any(owner)
                if found is None:
                    for value in got:
                        await self.ports.release(value, owner["uid"])
                    raise errors.ApiError(errors.status(
                        500, "InternalError", "Internal error occurred: failed to allocate a nodePort: range is full"))
                port["nodePort"] = int(found)
                got.append(found)
        return got

    # ---------------------------------------------------------------- update
    async def allocate_update(self, new: Obj, old: Obj) -> ServiceChange:
        """An update keeps the allocated values it leaves out (kube's patchAllocatedValues), allocates what a
        new type needs (ExternalName -> ClusterIP, ClusterIP -> NodePort) and frees what it no longer uses."""
        spec = new.setdefault("spec", {})
        old_spec = old.get("spec") or {}
        name = new["metadata"].get("name", "")
        owner = owner_of(new)
        if wants_cluster_ip(spec) and wants_cluster_ip(old_spec) and not spec.get("clusterIP"):
            for field_name in ("clusterIP", "clusterIPs"):
                if old_spec.get(field_name):
                    spec[field_name] = old_spec[field_name]
        if wants_node_ports(spec) and wants_node_ports(old_spec):
            before = {(p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
                      for p in old_spec.get("ports") or [] if p.get("nodePort")}
            for port in spec.get("ports") or []:
                if not port.get("nodePort") and (port.get("port"), port.get("protocol", "TCP")) in before:
                    port["nodePort"] = before[(port.get("port"), port.get("protocol", "TCP"))]
        change = ServiceChange(owner["uid"])
        try:
            if wants_cluster_ip(spec) and not ips_of(old):
                change.gained.append((self.ips, await self.allocate_ip(spec, name, owner)))
            if wants_node_ports(spec):
                held = frozenset(node_ports_of(old))
                for value in await self.allocate_node_ports(spec, name, owner, held):
                    change.gained.append((self.ports, value))
        except BaseException:
            await change.undo()
            raise
        for reservations, before_values, after_values in ((self.ips, ips_of(old), ips_of(new)),
                                                          (self.ports, node_ports_of(old), node_ports_of(new))):
            change.dropped += [(reservations, v) for v in before_values if v not in after_values]
        return change

    # ---------------------------------------------------------------- release on delete
    async def release(self, obj: Obj) -> None:
        uid = obj["metadata"].get("uid")
        for ip in ips_of(obj):
            await self.ips.release(ip, uid)
        for port in node_ports_of(obj):
            await self.ports.release(port, uid)

    # ---------------------------------------------------------------- repair
    async def repair(self) -> None:
        """Reserve what stored services use; release what no service uses (leaked twice in a row)."""
        listed = await self.registry.list(self.services, "", ListOptions())
        used: dict[Reservations, set[str]] = {self.ips: set(), self.ports: set()}
        for svc in listed["items"]:
            owner = owner_of(svc)
            for reservations, values in ((self.ips, ips_of(svc)), (self.ports, node_ports_of(svc))):
                for value in values:
                    used[reservations].add(value)
                    await reservations.reserve(value, owner)  # adopt services stored before reservations
        suspects: dict[tuple[str, str], int] = {}
        for kind, reservations in (("ip", self.ips), ("port", self.ports)):
            for value, mod_revision in (await reservations.held()).items():
                if value in used[reservations]:
                    continue
                if self._suspects.get((kind, value)) == mod_revision:
                    log.info("releasing leaked service %s reservation %s", kind, value)
                    await reservations.release(value)
                else:
                    suspects[(kind, value)] = mod_revision
        self._suspects = suspects

    async def run_repair(self, interval: float = REPAIR_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.repair()
            except Exception:
                log.warning("service allocation repair failed", exc_info=True)


class ServiceChange:
    """What an update allocated (undone if the write fails) and what it stops using (freed once written)."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.gained: list[tuple[Reservations, str]] = []
        self.dropped: list[tuple[Reservations, str]] = []

    async def undo(self) -> None:
        for reservations, value in self.gained:
            await reservations.release(value, self.uid)
        self.gained = []

    async def finish(self) -> None:
        for reservations, value in self.dropped:
            await reservations.release(value, self.uid)


def ip_error(name: str, ip: str, why: str) -> errors.ApiError:
    return errors.invalid("Service", "", name, [{
        "reason": "FieldValueInvalid", "field": "spec.clusterIPs",
        "message": f'Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: {why}'}])


def port_cause(index: int, value: Any, why: str) -> Obj:
    return {"reason": "FieldValueInvalid", "field": f"spec.ports[{index}].nodePort",
            "message": f"Invalid value: {value}: {why}"}
