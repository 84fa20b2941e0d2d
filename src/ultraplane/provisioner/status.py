"""NodePool and SimNodeClass status: node counts, resources and conditions, written only when they change."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ultraplane.client.http import MERGE, ApiError
from ultraplane.provisioner import apis, conditions
from ultraplane.scheduler.quantity import parse_resource

if TYPE_CHECKING:
    from ultraplane.provisioner.controller import Provisioner

log = logging.getLogger("ultraplane.provisioner")
Obj = dict[str, Any]


def quantity_text(name: str, value: int) -> str:
    if name == "cpu":
        return f"{value // 1000}" if value % 1000 == 0 else f"{value}m"
    if name == "memory":
        return f"{value // 1024}Ki" if value % 1024 == 0 else str(value)
    return str(value)


class StatusWriter:
    # ------------------------------------------------------------------ NodePool and node class status
    async def _status_loop(self: Provisioner) -> None:
        written: dict[str, Obj] = {}
        while True:
            try:
                await self.update_status(written)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status update failed")
            await asyncio.sleep(1.0)

    async def update_status(self: Provisioner, written: dict[str, Obj]) -> None:
        for nc in self.nodeclasses.list():
            name = nc["metadata"]["name"]
            zones = (nc.get("spec") or {}).get("zones") or self.catalog.zones
            bad = [z for z in zones if z not in self.catalog.zones]
            conds = nc.get("status", {}).get("conditions") or []
            if bad:
                conds = conditions.set_condition(conds, "Ready", "False", "SubnetsNotFound",
                                                 f"no subnets in zones {bad} of region {self.catalog.region}")
            else:
                conds = conditions.set_condition(conds, "Ready", "True")
            status = {"conditions": conds, "amis": [{"id": "ami-0ultraplanesim2023", "name": "ultraplane-sim"}],
                      "subnets": [{"id": f"subnet-{z}", "zone": z} for z in zones if z in self.catalog.zones]}
            await self._write_status(f"{apis.NODECLASSES}/{name}", "nc/" + name, status, written, nc)
        views, broken = self.pool_views()
        by_pool: dict[str, list[int]] = {}
        for claim in self.nodeclaims.list():
            pool = (claim["metadata"].get("labels") or {}).get(apis.NODEPOOL_LABEL, "")
            cap = (claim.get("status") or {}).get("capacity") or {}
            row = by_pool.setdefault(pool, [0, 0, 0, 0, 0])
            row[0] += 1
            for i, res in enumerate(("cpu", "memory", "pods", "nvidia.com/gpu"), start=1):
                row[i] += parse_resource(res, cap.get(res, 0))
        limits = self.pool_limits()
        for pool in self.nodepools.list():
            name = pool["metadata"]["name"]
            row = by_pool.get(name, [0, 0, 0, 0, 0])
            conds = pool.get("status", {}).get("conditions") or []
            generation = pool["metadata"].get("generation")
            conds = conditions.set_condition(conds, "ValidationSucceeded", "True", generation=generation)
            if name in broken:
                conds = conditions.set_condition(conds, "NodeClassReady", "False", "NodeClassNotReady", broken[name],
                                                 generation)
                conds = conditions.set_condition(conds, "Ready", "False", "NodeClassNotReady", broken[name],
                                                 generation)
            else:
                conds = conditions.set_condition(conds, "NodeClassReady", "True", generation=generation)
                conds = conditions.set_condition(conds, "Ready", "True", generation=generation)
            lim = limits.get(name)
            if lim is not None and any(v is not None and v <= 0 for v in (lim.cpu, lim.memory, lim.gpu, lim.nodes)):
                conds = conditions.set_condition(conds, "LimitsReached", "True", "LimitsExceeded",
                                                 f'all available instance types exceed limits for nodepool: "{name}"',
                                                 generation)
            else:
                conds = [c for c in conds if c["type"] != "LimitsReached"]
            resources = {"cpu": quantity_text("cpu", row[1]), "memory": quantity_text("memory", row[2]),
                         "pods": str(row[3]), "nodes": str(row[0])}
            if row[4]:
                resources["nvidia.com/gpu"] = str(row[4])
            status = {"nodes": row[0], "resources": resources, "conditions": conds}
            await self._write_status(f"{apis.NODEPOOLS}/{name}", "np/" + name, status, written, pool)
            self.metrics.nodepool_usage(name, row)

    async def _write_status(self: Provisioner, path: str, key: str, status: Obj, written: dict[str, Obj], obj: Obj) -> None:
        current = obj.get("status") or {}
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        if conditions.same(current.get("conditions"), status.get("conditions")) and all(
                current.get(k) == v for k, v in comparable.items()):
            return
        if written.get(key) == status:
            return
        written[key] = status
        try:
            await self.client.patch(f"{path}/status", {"status": status}, content_type=MERGE)
        except ApiError as exc:
            log.debug("status of %s: %s", path, exc)
            written.pop(key, None)

