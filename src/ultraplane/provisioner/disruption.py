"""Disruption: expiration, drift, emptiness and underutilization, within the NodePools' budgets.

Every pass (one command in flight at a time, as Karpenter's queue): expired NodeClaims are deleted
outright (expiration is forceful: no budgets, no do-not-disrupt check); Drifted conditions are
refreshed; then drifted, empty and underutilized nodes are disrupted as far as budgets allow. A node
with a `karpenter.sh/do-not-disrupt` pod or annotation is never a voluntary candidate. Underutilized
nodes go when their pods fit on the other nodes (several at once), or are replaced by one cheaper node.
A command taints its nodes `karpenter.sh/disrupted:NoSchedule`, launches any replacements and waits
for them to be Initialized, then deletes the NodeClaims; termination drains them through the eviction
API, so PodDisruptionBudgets hold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ultraplane.controllers import cronschedule
from ultraplane.provisioner import apis, conditions
from ultraplane.provisioner.binpack import Limits, Plan, fits
from ultraplane.provisioner.options import nodeclass_hash, template_hash
from ultraplane.provisioner.pods import node_free, pending_pod, reschedulable, tolerates_all
from ultraplane.provisioner.requirements import matches_all, parse
from ultraplane.scheduler.quantity import parse_resource

if TYPE_CHECKING:
    from ultraplane.provisioner.controller import Provisioner

log = logging.getLogger("ultraplane.provisioner.disruption")
Obj = dict[str, Any]
READY_TIMEOUT_S = 180.0
MAX_CONSOLIDATION_CANDIDATES = 100  # multi-node consolidation looks at this many, cheapest to disrupt first


@dataclass
class Candidate:
    claim: Obj
    node: Obj
    pool: Obj
    pods: list[Obj]
    price: float
    blocked: str = ""  # why it may not be disrupted voluntarily

    @property
    def name(self) -> str:
        return self.claim["metadata"]["name"]

    @property
    def node_name(self) -> str:
        return self.node["metadata"]["name"]

    @property
    def pool_name(self) -> str:
        return self.pool["metadata"]["name"]


@dataclass
class Command:
    reason: str  # Empty, Drifted, Underutilized
    decision: str  # delete or replace
    candidates: list[Candidate]
    replacements: list[Plan] = field(default_factory=list)


def allowed_disruptions(budgets: list[Obj] | None, reason: str, total: int, disrupting: int,
                        now: dt.datetime) -> int:
    """Karpenter's budget arithmetic: the most restrictive budget active now that covers `reason`
    (percentages of the pool's nodes rounded up), less the nodes already being disrupted."""
    if budgets is None:
        budgets = [{"nodes": "10%"}]
    allowed = total
    for b in budgets:
        if b.get("reasons") and reason not in b["reasons"]:
            continue
        if b.get("schedule"):
            try:
                schedule = cronschedule.parse(b["schedule"])
                duration = conditions.parse_duration(b.get("duration")) or 0
            except (ValueError, cronschedule.ScheduleError):
                continue
            hit = schedule.next(now - dt.timedelta(seconds=duration))
            if hit is None or hit > now:
                continue  # outside the budget's window
        text = str(b.get("nodes", "10%"))
        value = math.ceil(total * int(text[:-1]) / 100) if text.endswith("%") else int(text)
        allowed = min(allowed, value)
    return max(0, allowed - disrupting)


class Disruption:
    def __init__(self, provisioner: Provisioner) -> None:
        self.p = provisioner
        self.command: asyncio.Task[None] | None = None
        self.executed: list[Command] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.p.cfg.disruption_interval)
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("disruption pass failed")

    # ------------------------------------------------------------------ state
    def candidates(self) -> list[Candidate]:
        pools = {p["metadata"]["name"]: p for p in self.p.nodepools.list()}
        nominated = {claim for key, claim in self.p.nominated.items() if self.p.nomination_valid(key)}
        out = []
        for claim in self.p.nodeclaims.list():
            meta = claim["metadata"]
            pool = pools.get((meta.get("labels") or {}).get(apis.NODEPOOL_LABEL, ""))
            if meta.get("deletionTimestamp") or pool is None:
                continue
            if not conditions.is_true((claim.get("status") or {}).get("conditions"), "Initialized"):
                continue
            node = self.p.claim_node(claim)
            if node is None:
                continue
            labels = meta.get("labels") or {}
            try:
                price = self.p.catalog.price(labels.get(apis.INSTANCE_TYPE_LABEL, ""),
                                             labels.get(apis.ZONE_LABEL, ""), labels.get(apis.CAPACITY_TYPE_LABEL, ""))
            except KeyError:
                price = math.inf
            pods = self.p.node_pods(node["metadata"]["name"])
            moving = [pod for pod in pods if reschedulable(pod)]
            blocked = ""
            if (node["metadata"].get("annotations") or {}).get(apis.DO_NOT_DISRUPT) == "true" or \
                    (meta.get("annotations") or {}).get(apis.DO_NOT_DISRUPT) == "true":
                blocked = "Disruption is blocked through the \"karpenter.sh/do-not-disrupt\" annotation"
            for pod in moving:
                if (pod["metadata"].get("annotations") or {}).get(apis.DO_NOT_DISRUPT) == "true":
                    blocked = (f'Pod "{pod["metadata"].get("namespace")}/{pod["metadata"]["name"]}" has '
                               f'"karpenter.sh/do-not-disrupt" annotation')
                    break
            if any(t.get("key") == apis.DISRUPTED_TAINT["key"] for t in (node.get("spec") or {}).get("taints") or []):
                blocked = "node is already being disrupted"
            if meta["name"] in nominated:
                blocked = "Node is nominated for a pending pod"
            out.append(Candidate(claim, node, pool, moving, price, blocked))
        return out

    def budget(self, pool: Obj, reason: str, now: dt.datetime | None = None) -> int:
        """Nodes of `pool` that may still be disrupted for `reason` (the most restrictive active budget)."""
        now = now or dt.datetime.now(dt.UTC)
        name = pool["metadata"]["name"]
        claims = [c for c in self.p.nodeclaims.list()
                  if (c["metadata"].get("labels") or {}).get(apis.NODEPOOL_LABEL) == name]
        total = len(claims)
        disrupting = 0
        for c in claims:
            node = self.p.claim_node(c)
            tainted = node is not None and any(t.get("key") == apis.DISRUPTED_TAINT["key"]
                                               for t in (node.get("spec") or {}).get("taints") or [])
            if c["metadata"].get("deletionTimestamp") or tainted:
                disrupting += 1
        budgets = ((pool.get("spec") or {}).get("disruption") or {}).get("budgets")
        return allowed_disruptions(budgets, reason, total, disrupting, now)

    # ------------------------------------------------------------------ one pass
    async def once(self) -> None:
        await self.expire()
        await self.mark_drift()
        if self.command is not None and not self.command.done():
            return
        if any(p.key not in self.p.unplaceable for p in self.p.pending()) or any(not conditions.is_true((c.get("status") or {}).get("conditions"), "Initialized")
                                   for c in self.p.nodeclaims.list() if not c["metadata"].get("deletionTimestamp")):
            return  # the cluster is still settling: consolidating now would race provisioning
        candidates = self.candidates()
        for method in (self.drift, self.emptiness, self.underutilized):
            command = method(candidates)
            if command is not None and command.candidates:
                self.command = asyncio.create_task(self.execute(command))
                return

    async def expire(self) -> None:
        now = time.time()
        for claim in self.p.nodeclaims.list():
            meta = claim["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            expire_after = conditions.parse_duration(claim["spec"].get("expireAfter"))
            created = conditions.parse_time(meta.get("creationTimestamp"))
            if expire_after is None or created is None or now - created < expire_after:
                continue
            pool = (meta.get("labels") or {}).get(apis.NODEPOOL_LABEL, "")
            log.info("nodeclaim %s expired after %s", meta["name"], claim["spec"].get("expireAfter"))
            self.p.events.event(claim, "Normal", "DisruptionTerminating", "Disrupting NodeClaim: Expired")
            self.p.metrics.disrupted(pool, "expired")
            await self.p._delete_claim(meta["name"])

    def drifted(self, claim: Obj, pool: Obj) -> str:
        annotations = claim["metadata"].get("annotations") or {}
        if annotations.get(apis.NODEPOOL_HASH) not in (None, template_hash(pool)):
            return "NodePoolDrifted"
        ref = claim["spec"].get("nodeClassRef") or {}
        nodeclass = self.p.nodeclasses.get(ref.get("name", ""))
        if nodeclass is not None and annotations.get(apis.NODECLASS_HASH) not in (None, nodeclass_hash(nodeclass)):
            return "NodeClassDrifted"
        labels = claim["metadata"].get("labels") or {}
        requirements = parse(((pool["spec"].get("template") or {}).get("spec") or {}).get("requirements"))
        itype = self.p.catalog.types.get(labels.get(apis.INSTANCE_TYPE_LABEL, ""))
        if itype is not None and not matches_all(requirements, {**itype.labels, **labels}):
            return "RequirementsDrifted"
        return ""

    async def mark_drift(self) -> None:
        pools = {p["metadata"]["name"]: p for p in self.p.nodepools.list()}
        for claim in self.p.nodeclaims.list():
            meta = claim["metadata"]
            pool = pools.get((meta.get("labels") or {}).get(apis.NODEPOOL_LABEL, ""))
            conds = (claim.get("status") or {}).get("conditions") or []
            if pool is None or meta.get("deletionTimestamp") or not conditions.is_true(conds, "Launched"):
                continue
            reason = self.drifted(claim, pool)
            current = conditions.get(conds, "Drifted")
            if reason and (current is None or current.get("reason") != reason):
                new = conditions.set_condition(conds, "Drifted", "True", reason, "")
            elif not reason and current is not None:
                new = [c for c in conds if c.get("type") != "Drifted"]
            else:
                continue
            state = self.p.claims.get(meta["name"])
            if state is not None:
                state.written = new
            await self.p.client.patch(f"{apis.NODECLAIMS}/{meta['name']}/status", {"status": {"conditions": new}},
                                      content_type="application/merge-patch+json")

    # ------------------------------------------------------------------ methods
    def _within_budget(self, candidates: list[Candidate], reason: str) -> list[Candidate]:
        left: dict[str, int] = {}
        out = []
        for c in candidates:
            if c.pool_name not in left:
                left[c.pool_name] = self.budget(c.pool, reason)
            if left[c.pool_name] > 0:
                left[c.pool_name] -= 1
                out.append(c)
            elif left[c.pool_name] == 0:
                left[c.pool_name] = -1
                self.p.events.event(c.pool, "Normal", "DisruptionBlocked",
                                    f"No allowed disruptions for disruption reason {reason} due to blocking budget")
        return out

    def drift(self, candidates: list[Candidate]) -> Command | None:
        drifted = [c for c in candidates if not c.blocked and conditions.is_true(
            (c.claim.get("status") or {}).get("conditions"), "Drifted")]
        for c in self._within_budget(drifted, "Drifted")[:1]:
            plans = self.replacements([c], candidates)
            if plans is None:
                continue
            return Command("Drifted", "replace" if plans else "delete", [c], plans)
        return None

    def _policy(self, pool: Obj) -> tuple[str, float | None]:
        disruption = (pool.get("spec") or {}).get("disruption") or {}
        after = disruption.get("consolidateAfter", "0s")
        return disruption.get("consolidationPolicy", "WhenEmptyOrUnderutilized"), (
            None if after == "Never" else conditions.parse_duration(after) or 0.0)

    def _settled(self, c: Candidate, after: float) -> bool:
        created = conditions.parse_time(c.claim["metadata"].get("creationTimestamp")) or 0.0
        last = self.p.node_pod_event.get(c.node_name, created)
        return time.time() - max(last, created) >= after

    def emptiness(self, candidates: list[Candidate]) -> Command | None:
        empty = []
        for c in candidates:
            _, after = self._policy(c.pool)
            if not c.blocked and not c.pods and after is not None and self._settled(c, after):
                empty.append(c)
        chosen = self._within_budget(empty, "Empty")
        return Command("Empty", "delete", chosen) if chosen else None

    def underutilized(self, candidates: list[Candidate]) -> Command | None:
        eligible = []
        for c in candidates:
            policy, after = self._policy(c.pool)
            if c.blocked or policy != "WhenEmptyOrUnderutilized" or after is None or not self._settled(c, after):
                continue
            eligible.append(c)
        # cheapest to disrupt first: fewest pods, then the most expensive node (the biggest saving)
        eligible.sort(key=lambda c: (len(c.pods), -c.price))
        eligible = self._within_budget(eligible[:MAX_CONSOLIDATION_CANDIDATES], "Underutilized")
        # multi-node delete: take nodes while all their pods still fit on the nodes that stay
        chosen: list[Candidate] = []
        for c in eligible:
            if self.fit_elsewhere([*chosen, c], candidates):
                chosen.append(c)
        if chosen:
            return Command("Underutilized", "delete", chosen)
        # single-node replace with a cheaper node
        for c in eligible:
            plans = self.replacements([c], candidates)
            if plans is None or len(plans) != 1:
                continue
            new_price = plans[0].option.price
            if new_price < c.price:
                return Command("Underutilized", "replace", [c], plans)
            self.p.events.event(c.node, "Normal", "Unconsolidatable", "Can't replace with a cheaper node")
        return None

    # ------------------------------------------------------------------ simulation
    def _staying_nodes(self, leaving: set[str]) -> list[tuple[Obj, list[int]]]:
        out = []
        for node in self.p.nodes.list():
            name = node["metadata"]["name"]
            taints = (node.get("spec") or {}).get("taints") or []
            if name in leaving or node["metadata"].get("deletionTimestamp") or (node.get("spec") or {}).get(
                    "unschedulable") or any(t.get("key") == apis.DISRUPTED_TAINT["key"] for t in taints):
                continue
            if not conditions.is_true((node.get("status") or {}).get("conditions"), "Ready"):
                continue
            out.append((node, list(node_free(node, self.p.node_pods(name)))))
        return out

    def fit_elsewhere(self, leaving: list[Candidate], candidates: list[Candidate]) -> bool:
        """Would every pod of `leaving` fit on the nodes that stay (first fit, biggest pods first)?"""
        names = {c.node_name for c in leaving}
        staying = self._staying_nodes(names)
        pods = sorted((pending_pod(p) for c in leaving for p in c.pods), key=lambda p: p.requests, reverse=True)
        for pod in pods:
            for node, free in staying:
                if not fits(pod.requests, tuple(free)):  # type: ignore[arg-type]
                    continue
                labels = node["metadata"].get("labels") or {}
                if not any(matches_all(term, labels) for term in pod.terms):
                    continue
                if not tolerates_all(pod.tolerations, (node.get("spec") or {}).get("taints") or []):
                    continue
                for i in range(4):
                    free[i] -= pod.requests[i]
                break
            else:
                return False
        return True

    def replacements(self, leaving: list[Candidate], candidates: list[Candidate]) -> list[Plan] | None:
        """New nodes for the pods of `leaving` that do not fit on the nodes that stay; None if impossible."""
        if self.fit_elsewhere(leaving, candidates):
            return []
        pods = [pending_pod(p) for c in leaving for p in c.pods]
        views, _ = self.p.pool_views()
        limits = self.p.pool_limits()
        for c in leaving:  # what the leaving nodes hold goes back to their pool's headroom
            cap = (c.claim.get("status") or {}).get("capacity") or {}
            room = limits.setdefault(c.pool_name, Limits())
            for attr, res in (("cpu", "cpu"), ("memory", "memory"), ("gpu", "nvidia.com/gpu")):
                if getattr(room, attr) is not None:
                    setattr(room, attr, getattr(room, attr) + parse_resource(res, cap.get(res, 0)))
            if room.nodes is not None:
                room.nodes += 1
        plans, failures = self.p.plan(pods, views, limits)
        return None if failures else plans

    # ------------------------------------------------------------------ execution
    async def execute(self, command: Command) -> None:
        reason = command.reason
        log.info("disrupting %s via %s (%s): %s", len(command.candidates), command.decision, reason,
                 ", ".join(c.name for c in command.candidates))
        self.executed.append(command)
        self.p.metrics.decision(command.decision, reason.lower(),
                                "multi" if len(command.candidates) > 1 else "single")
        for c in command.candidates:
            await self.p.taint_disrupted(c.node)
        if command.replacements:
            views, _ = self.p.pool_views()
            made = await self.p.create_claims(command.replacements, views)
            for claim in made:
                self.p.events.event(claim, "Normal", "DisruptionLaunching", f"Launching NodeClaim: {reason}")
            names = [c["metadata"]["name"] for c in made]
            if not await self._wait_initialized(names) or len(made) != len(command.replacements):
                log.warning("replacements %s did not become ready; abandoning the disruption", names)
                for c in command.candidates:
                    await self.p.untaint_disrupted(c.node_name)
                for name in names:
                    await self.p._delete_claim(name)
                return
        for c in command.candidates:
            self.p.events.event(c.node, "Normal", "DisruptionTerminating", f"Disrupting Node: {reason}/"
                                f"{command.decision.title()}")
            self.p.events.event(c.claim, "Normal", "DisruptionTerminating", f"Disrupting NodeClaim: {reason}/"
                                f"{command.decision.title()}")
            self.p.metrics.disrupted(c.pool_name, reason.lower())
            await self.p._delete_claim(c.name)

    async def _wait_initialized(self, names: list[str]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all((claim := self.p.nodeclaims.get(n)) is not None and conditions.is_true(
                    (claim.get("status") or {}).get("conditions"), "Initialized") for n in names):
                return True
            await asyncio.sleep(0.5)
        return False
