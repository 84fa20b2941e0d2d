"""Pod and node addresses, as the AWS VPC CNI hands them out.

Every zone has a subnet of the VPC. A node's primary address comes from the first /16 of its zone's
subnet (fixed by the node's index, so a restarted simulator gives a node the same name and address);
pod addresses come from the rest. With prefix delegation a node attaches /28 prefixes (16 addresses,
one EC2 call each) as it needs them; without it every pod address is its own EC2 call
(AssignPrivateIpAddresses with WARM_IP_TARGET-style warm pools). `Ec2Api` models the calls: a
latency and an account-wide token bucket, which is what makes the two modes' launch rates differ.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

PREFIX_SIZE = 16  # a /28
NODE_AREA = 1 << 16  # the first /16 of a zone subnet holds node addresses


class AddressExhausted(Exception):
    pass


class Ec2Api:
    """Latency plus a token bucket (capacity `burst`, refilled at `qps`; qps 0 means no throttling)."""

    def __init__(self, latency: float = 0.0, qps: float = 0.0, burst: int = 200) -> None:
        self.latency = latency
        self.qps = qps
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.calls = 0
        self.lock = asyncio.Lock()

    async def call(self) -> None:
        self.calls += 1
        if self.qps > 0:
            async with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.qps)
                self.stamp = now
                if self.tokens < 1:
                    await asyncio.sleep((1 - self.tokens) / self.qps)
                    self.tokens = 1.0
                    self.stamp = time.monotonic()
                self.tokens -= 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)


class ZoneSubnet:
    """One zone's subnet: node addresses by index, pod prefixes / addresses from the rest."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        self.base = int(self.network.network_address)
        self.end = int(self.network.broadcast_address)
        self.next_block = self.base + NODE_AREA
        self.free_blocks: list[int] = []  # released /28s (or single addresses without prefixes)
        self.taken: set[int] = set()  # block starts in use, for adopting a restarted simulator's pods

    def node_address(self, index_in_zone: int) -> str:
        if index_in_zone + 10 >= NODE_AREA:
            raise AddressExhausted(f"subnet {self.network} holds at most {NODE_AREA - 10} nodes")
        return str(ipaddress.IPv4Address(self.base + 10 + index_in_zone))  # AWS reserves the first addresses

    def take(self, size: int) -> int:
        while self.free_blocks:
            start = self.free_blocks.pop()
            if start not in self.taken:
                self.taken.add(start)
                return start
        while self.next_block + size - 1 < self.end:
            start = self.next_block
            self.next_block += size
            if start not in self.taken:
                self.taken.add(start)
                return start
        raise AddressExhausted(f"subnet {self.network} has no free /{32 - (size.bit_length() - 1)}")

    def give_back(self, start: int) -> None:
        self.taken.discard(start)
        self.free_blocks.append(start)

    def claim(self, start: int) -> None:
        """An address block already in use (found on a pod at startup)."""
        self.taken.add(start)
        if start in self.free_blocks:
            self.free_blocks.remove(start)


class NodeAddresses:
    """The pod addresses one node holds: attached /28 prefixes (or single addresses) and which are in use."""

    __slots__ = ("subnet", "prefix_delegation", "blocks", "free", "used")

    def __init__(self, subnet: ZoneSubnet, prefix_delegation: bool) -> None:
        self.subnet = subnet
        self.prefix_delegation = prefix_delegation
        self.blocks: list[int] = []
        self.free: list[int] = []
        self.used: set[int] = set()

    @property
    def block_size(self) -> int:
        return PREFIX_SIZE if self.prefix_delegation else 1

    def needs_attach(self) -> bool:
        return not self.free

    def attach(self) -> None:
        """Take one more block from the subnet (the EC2 call happens before)."""
        start = self.subnet.take(self.block_size)
        self.blocks.append(start)
        self.free.extend(range(start + self.block_size - 1, start - 1, -1))

    def allocate(self) -> str:
        if not self.free:
            raise AddressExhausted("no free address attached")
        address = self.free.pop()
        self.used.add(address)
        return str(ipaddress.IPv4Address(address))

    def release(self, text: str) -> None:
        address = int(ipaddress.IPv4Address(text))
        if address in self.used:
            self.used.discard(address)
            self.free.append(address)
            if not self.prefix_delegation:  # a single secondary address goes back to the subnet
                self.free.remove(address)
                self.blocks.remove(address)
                self.subnet.give_back(address)

    def adopt(self, text: str) -> bool:
        """A pod of this node already has `text` (simulator restart): attach its block and mark it used."""
        address = int(ipaddress.IPv4Address(text))
        if not self.subnet.base + NODE_AREA <= address <= self.subnet.end:
            return False
        start = address - (address - self.subnet.base) % self.block_size
        if start not in self.blocks:
            self.subnet.claim(start)
            self.blocks.append(start)
            self.free.extend(a for a in range(start, start + self.block_size) if a not in self.used)
        if address in self.free:
            self.free.remove(address)
        self.used.add(address)
        return True

    def prefixes(self) -> list[str]:
        suffix = 28 if self.prefix_delegation else 32
        return [f"{ipaddress.IPv4Address(start)}/{suffix}" for start in self.blocks]


def zone_subnets(vpc_cidr: str, zones: int) -> list[ZoneSubnet]:
    """Split the VPC into equal subnets, one per zone (the next power of two above the zone count)."""
    vpc = ipaddress.IPv4Network(vpc_cidr)
    extra_bits = max(1, (zones - 1).bit_length())
    return [ZoneSubnet(str(net)) for net in list(vpc.subnets(prefixlen_diff=extra_bits))[:zones]]
