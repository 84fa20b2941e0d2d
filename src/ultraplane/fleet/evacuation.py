"""Region evacuation from the client's side: start one, follow its progress, undo it, or plan it dry.

The controller does the moving (see `controller.progress` and the evacuation taint); this module is what
`ultraplane fleet evacuate|restore` and the dashboard call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.fleet import members as m
from ultraplane.fleet import placement
from ultraplane.fleet.controller import EVACUATIONS, POLICY, WORK
from ultraplane.fleet.placement import PlacementError

Obj = dict[str, Any]


class EvacuationError(ValueError):
    pass


def evacuation_name(region: str) -> str:
    return f"evacuate-{region}"


async def _regions(fleet: KubeClient) -> dict[str, list[Obj]]:
    by_region: dict[str, list[Obj]] = {}
    for cluster in (await fleet.list(m.CLUSTERS)).get("items") or []:
        by_region.setdefault((cluster.get("spec") or {}).get("region", ""), []).append(cluster)
    return by_region


async def _check_region(fleet: KubeClient, region: str) -> dict[str, list[Obj]]:
    by_region = await _regions(fleet)
    if region not in by_region:
        known = ", ".join(sorted(r for r in by_region if r)) or "none"
        raise EvacuationError(f'region "{region}" has no member clusters; known regions: {known}')
    return by_region


async def start(fleet: KubeClient, region: str) -> Obj:
    await _check_region(fleet, region)
    body = {"apiVersion": "fleet.ultraplane.io/v1alpha1", "kind": "Evacuation",
            "metadata": {"name": evacuation_name(region)}, "spec": {"region": region}}
    try:
        return await fleet.create(EVACUATIONS, body)
    except ApiError as exc:
        if exc.code == 409:
            return await fleet.get(f"{EVACUATIONS}/{evacuation_name(region)}")
        raise


async def restore(fleet: KubeClient, region: str) -> None:
    try:
        await fleet.delete(f"{EVACUATIONS}/{evacuation_name(region)}")
    except ApiError as exc:
        if exc.code == 404:
            raise EvacuationError(f'region "{region}" is not evacuated') from exc
        raise


async def follow(fleet: KubeClient, region: str, console: Console, timeout: float) -> Obj:
    """Show the Evacuation's progress until it completes (or fails, or the timeout passes); print a summary."""
    path = f"{EVACUATIONS}/{evacuation_name(region)}"
    started = time.monotonic()
    status: Obj = {}
    with Progress(TextColumn("evacuating {task.fields[region]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("replicas"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("evacuate", total=None, region=region)
        while time.monotonic() - started < timeout:
            status = (await fleet.get(path)).get("status") or {}
            total = status.get("totalReplicas")
            bar.update(task, total=total if total else None, completed=status.get("movedReplicas", 0))
            if status.get("phase") in ("Completed", "Failed"):
                break
            await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started
    blocked = next((c for c in status.get("conditions") or [] if c.get("type") == "Blocked"), None)
    phase = status.get("phase", "Unknown")
    console.print(f"summary: evacuation of {region} {phase.lower()} in {elapsed:.1f} s — "
                  f"{status.get('movedReplicas', 0)} of {status.get('totalReplicas', 0)} replicas moved out of "
                  f"{len(status.get('clusters') or [])} cluster(s)")
    if blocked:
        console.print(f"blocked: {blocked.get('message')}")
    if phase == "Failed":
        for condition in status.get("conditions") or []:
            console.print(f"failed: {condition.get('message')}")
    return status


@dataclass
class DryRun:
    region: str
    moves: list[tuple[str, list[Obj], list[Obj]]] = field(default_factory=list)  # binding, from, to
    blocked: list[tuple[str, str]] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return not self.blocked


async def dry_run(fleet: KubeClient, region: str) -> DryRun:
    """Where each binding with replicas in the region would go, scheduling as the controller would."""
    by_region = await _check_region(fleet, region)
    clusters = [c for group in by_region.values() for c in group]
    leaving = {c["metadata"]["name"] for c in by_region[region]}
    plan = DryRun(region)
    policies = {}
    for path in (f"{POLICY}/propagationpolicies", f"{POLICY}/clusterpropagationpolicies"):
        for p in (await fleet.list(path)).get("items") or []:
            policies[(p["metadata"].get("namespace", ""), p["metadata"]["name"])] = p
    for path in (f"{WORK}/resourcebindings", f"{WORK}/clusterresourcebindings"):
        for binding in (await fleet.list(path)).get("items") or []:
            spec = binding.get("spec") or {}
            here = [t for t in spec.get("clusters") or [] if t["name"] in leaving]
            if not here:
                continue
            requests = {k: float(v) for k, v in (((spec.get("replicaRequirements") or {}).get("resourceRequest"))
                                                 or {}).items() if str(v).isdigit()}
            views = [m.view(c, requests) for c in clusters if c["metadata"]["name"] not in leaving]
            name = f"{binding['metadata'].get('namespace', '')}/{binding['metadata']['name']}"
            try:
                targets, _ = placement.schedule(spec.get("placement") or {}, spec.get("replicas", 0), views)
            except PlacementError as exc:
                plan.blocked.append((name, str(exc)))
                continue
            plan.moves.append((name, here, targets))
    return plan


def print_dry_run(plan: DryRun, console: Console) -> None:
    table = Table(title=f"Evacuation of {plan.region} (dry run)")
    for column in ("BINDING", "FROM", "TO"):
        table.add_column(column)
    for name, here, targets in plan.moves:
        table.add_row(name, ", ".join(f"{t['name']}={t.get('replicas', 0)}" for t in here),
                      ", ".join(f"{t['name']}={t.get('replicas', 0)}" for t in targets))
    for name, why in plan.blocked:
        table.add_row(name, "", f"[red]cannot move: {why}[/]")
    console.print(table)
    console.print(f"summary: {len(plan.moves)} binding(s) can move, {len(plan.blocked)} cannot")
