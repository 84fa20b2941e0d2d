"""Leader election on a coordination.k8s.io Lease, with client-go's defaults as kube-scheduler and
kube-controller-manager use them (15 s lease, 10 s renew deadline, 2 s retry period): only the holder
works. Shared by `ultraplane scheduler` (kube-system/kube-scheduler) and `ultraplane controllers`
(kube-system/kube-controller-manager)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from ultraplane.client.http import ApiError, KubeClient

log = logging.getLogger("ultraplane.client.leader")
LEASE_DURATION_S = 15
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0


def _micro_time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaderElector:
    def __init__(self, client: KubeClient, identity: str, name: str = "kube-scheduler",
                 namespace: str = "kube-system") -> None:
        self.client, self.identity = client, identity
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name, self.namespace = name, namespace

    async def _try(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        try:
            lease: dict[str, Any] = await self.client.get(f"{self.path}/{self.name}")
        except ApiError as err:
            if err.code != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": LEASE_DURATION_S,
                             "acquireTime": _micro_time(now), "renewTime": _micro_time(now), "leaseTransitions": 0}}
            await self.client.create(self.path, body)
            return True
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = int(spec.get("leaseDurationSeconds") or LEASE_DURATION_S)
        if holder and holder != self.identity and renewed and now < renewed + dt.timedelta(seconds=duration):
            return False
        if holder != self.identity:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=LEASE_DURATION_S, renewTime=_micro_time(now))
        await self.client.update(f"{self.path}/{self.name}", lease)  # resourceVersion guards the race
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                if await self._try():
                    log.info("%s acquired lease %s/%s", self.identity, self.namespace, self.name)
                    return True
            except (ApiError, OSError) as err:
                log.debug("acquiring lease: %s", err)
            try:
                await asyncio.wait_for(stop.wait(), RETRY_PERIOD_S)
            except TimeoutError:
                pass
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until stopped; set ``stop`` if the lease cannot be renewed within the deadline."""
        last = asyncio.get_running_loop().time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), RETRY_PERIOD_S)
                return
            except TimeoutError:
                pass
            try:
                if await self._try():
                    last = asyncio.get_running_loop().time()
                    continue
            except (ApiError, OSError) as err:
                log.debug("renewing lease: %s", err)
            if asyncio.get_running_loop().time() - last > RENEW_DEADLINE_S:
                log.error("leaderelection lost: %s could not renew lease %s/%s", self.identity, self.namespace,
                          self.name)
                stop.set()

    async def release(self) -> None:
        """Give the lease up on a clean shutdown (client-go's ReleaseOnCancel): an empty holder with a
        1 s duration, so a successor acquires at once instead of waiting out the 15 s lease."""
        try:
            lease: dict[str, Any] = await self.client.get(f"{self.path}/{self.name}")
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") != self.identity:
                return
            now = _micro_time(dt.datetime.now(dt.UTC))
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
            await self.client.update(f"{self.path}/{self.name}", lease)
        except (ApiError, OSError) as err:
            log.debug("releasing lease: %s", err)
