"""One sync operation against one destination cluster, in Argo CD's order: phases PreSync, Sync, PostSync; in each
phase waves by `argocd.argoproj.io/sync-wave` (lowest first), in a wave kinds in Argo's kind order. Every
resource is server-side dry-run first, so an invalid manifest fails the operation before anything is applied.
A wave waits for the previous one to be healthy (hooks: their Job or Pod finished). Prune runs after the Sync
phase; hook-delete-policy HookSucceeded / BeforeHookCreation (the default) / HookFailed is honoured."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ultraplane.client.discovery import Resource, discover, group_of
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.gitops import health

Obj = dict[str, Any]
FIELD_MANAGER = "argocd-controller"
INSTANCE_LABEL = "app.kubernetes.io/instance"
WAVE = "argocd.argoproj.io/sync-wave"
HOOK = "argocd.argoproj.io/hook"
HOOK_DELETE = "argocd.argoproj.io/hook-delete-policy"
SYNC_OPTIONS = "argocd.argoproj.io/sync-options"
PHASES = ("PreSync", "Sync", "PostSync")
KIND_ORDER = ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
              "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
              "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
              "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding",
              "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
              "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService"]


class SyncFailed(Exception):
    pass


def annotations(obj: Obj) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def options(obj: Obj) -> set[str]:
    return {o.strip() for o in annotations(obj).get(SYNC_OPTIONS, "").split(",") if o.strip()}


def wave(obj: Obj) -> int:
    try:
        return int(annotations(obj).get(WAVE, "0"))
    except ValueError:
        return 0


def hook_phases(obj: Obj) -> list[str]:
    return [p.strip() for p in annotations(obj).get(HOOK, "").split(",") if p.strip()]


def kind_rank(obj: Obj) -> int:
    kind = obj.get("kind", "")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def ref(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace') + '/' if meta.get('namespace') else ''}{meta.get('name')}"


class Cluster:
    """A destination: its client and discovery (refreshed when a kind is unknown, e.g. a CRD just created)."""

    def __init__(self, name: str, server: str, client: KubeClient) -> None:
        self.name = name
        self.server = server
        self.client = client
        self.kinds: dict[tuple[str, str], Resource] = {}
        self.discovered_at = 0.0
        self.lock = asyncio.Lock()

    async def resource(self, obj: Obj) -> Resource:
        key = (group_of(obj.get("apiVersion", "")), obj.get("kind", ""))
        if key not in self.kinds:
            async with self.lock:
                if key not in self.kinds and time.monotonic() - self.discovered_at > 0.5:
                    self.kinds = {(r.group, r.kind): r for r in await discover(self.client)}
                    self.discovered_at = time.monotonic()
        if key not in self.kinds:
            meta = obj.get("metadata") or {}
            raise SyncFailed(f"The Kubernetes API could not find {key[0] or 'core'}/{key[1]} for requested resource "
                             f"{meta.get('namespace', '')}/{meta.get('name')}. Make sure the \"{key[1]}\" CRD is "
                             "installed on the destination cluster.")
        return self.kinds[key]

    async def path(self, obj: Obj) -> str:
        resource = await self.resource(obj)
        meta = obj["metadata"]
        return resource.item(meta.get("namespace", "") if resource.namespaced else "", meta["name"])

    async def get(self, obj: Obj) -> Obj | None:
        try:
            return await self.client.get(await self.path(obj))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def apply(self, obj: Obj, dry_run: bool = False) -> Obj:
        params: dict[str, Any] = {"fieldManager": FIELD_MANAGER, "force": True}
        if dry_run:
            params["dryRun"] = "All"
        return await self.client.request("PATCH", await self.path(obj), params, obj,
                                         "application/apply-patch+yaml")

    async def delete(self, obj: Obj) -> None:
        try:
            await self.client.delete(await self.path(obj), {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.code != 404:
                raise


@dataclass
class SyncResult:
    resources: list[Obj] = field(default_factory=list)
    message: str = ""
    failed: bool = False


def _result(obj: Obj, status: str, message: str, phase: str, hook: bool = False, hook_phase: str = "") -> Obj:
    meta = obj.get("metadata") or {}
    api = obj.get("apiVersion", "")
    entry = {"group": group_of(api), "version": api.rpartition("/")[2], "kind": obj.get("kind", ""),
             "namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "status": status,
             "message": message, "syncPhase": phase}
    if hook:
        entry["hookType"] = phase
        entry["hookPhase"] = hook_phase
    return entry


async def wait_healthy(cluster: Cluster, objs: list[Obj], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(objs)
    while pending:
        still = []
        for obj in pending:
            state = health.assess(await cluster.get(obj))
            if state is None or state[0] == health.HEALTHY:
                continue
            if state[0] == health.DEGRADED:
                raise SyncFailed(f"{ref(obj)} is Degraded: {state[1]}".rstrip(": "))
            still.append(obj)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise SyncFailed(f"timed out waiting for {ref(pending[0])} to become healthy")
            await asyncio.sleep(0.3)


async def run_sync(cluster: Cluster, targets: list[Obj], prune_candidates: list[Obj], prune: bool,
                   dry_run: bool = False, wave_timeout: float = 300.0) -> SyncResult:
    """Apply `targets` (hooks included, told apart by their annotation) and delete `prune_candidates`."""
    result = SyncResult()
    resources = [t for t in targets if not hook_phases(t)]
    hooks = [t for t in targets if hook_phases(t) and "Skip" not in hook_phases(t)]
    # dry-run everything first: nothing is applied when any manifest would be rejected
    errors = []
    for obj in resources + hooks:
        try:
            await cluster.apply(obj, dry_run=True)
        except SyncFailed as exc:
            if "could not find" in str(exc) and any(t.get("kind") == "CustomResourceDefinition" for t in targets):
                continue  # its CRD is part of this sync
            errors.append((obj, str(exc)))
        except ApiError as exc:
            if exc.code == 404 and "namespaces" in exc.message:
                continue  # namespace created earlier in this sync
            errors.append((obj, exc.message))
    if errors:
        for obj, message in errors:
            result.resources.append(_result(obj, "SyncFailed", message, "Sync"))
        result.failed = True
        result.message = "one or more objects failed to apply, reason: " + "; ".join(
            f"{ref(o)}: {m}" for o, m in errors)
        return result
    if dry_run:
        result.message = "successfully synced (dry run)"
        return result
    try:
        for phase in PHASES:
            members = [(wave(o), kind_rank(o), o, False) for o in resources if phase == "Sync"]
            members += [(wave(o), kind_rank(o), o, True) for o in hooks if phase in hook_phases(o)]
            waves = sorted({m[0] for m in members})
            for number in waves:
                batch = sorted((m for m in members if m[0] == number), key=lambda m: m[1])
                applied = []
                for _, _, obj, is_hook in batch:
                    if is_hook:
                        policies = set(annotations(obj).get(HOOK_DELETE, "BeforeHookCreation").split(","))
                        if "BeforeHookCreation" in policies:
                            await _delete_and_wait(cluster, obj)
                    try:
                        await cluster.apply(obj)
                    except ApiError as exc:
                        result.resources.append(_result(obj, "SyncFailed", exc.message, phase, is_hook, "Failed"))
                        raise SyncFailed(f"{ref(obj)}: {exc.message}") from None
                    result.resources.append(_result(obj, "Synced", f"{obj['kind'].lower()} configured", phase,
                                                    is_hook, "Running"))
                    applied.append((obj, is_hook))
                await _settle(cluster, applied, result, wave_timeout)
            if phase == "Sync":
                for obj in prune_candidates:
                    if not prune or "Prune=false" in options(obj):
                        result.resources.append(_result(obj, "PruneSkipped", "ignored (requires pruning)", phase))
                        continue
                    await cluster.delete(obj)
                    result.resources.append(_result(obj, "Pruned", "pruned", phase))
    except SyncFailed as exc:
        result.failed = True
        result.message = str(exc)
        return result
    result.message = "successfully synced (all tasks run)"
    return result


async def _delete_and_wait(cluster: Cluster, obj: Obj, timeout: float = 60.0) -> None:
    if await cluster.get(obj) is None:
        return
    await cluster.delete(obj)
    deadline = time.monotonic() + timeout
    while await cluster.get(obj) is not None:
        if time.monotonic() > deadline:
            raise SyncFailed(f"timed out deleting previous hook {ref(obj)}")
        await asyncio.sleep(0.2)


async def _settle(cluster: Cluster, applied: list[tuple[Obj, bool]], result: SyncResult, timeout: float) -> None:
    """Wait for the wave to be healthy; finish hooks by their delete policy."""
    try:
        await wait_healthy(cluster, [o for o, _ in applied], timeout)
    except SyncFailed:
        for obj, is_hook in applied:
            if is_hook and "HookFailed" in annotations(obj).get(HOOK_DELETE, ""):
                await cluster.delete(obj)
        _mark_hooks(result, applied, "Failed")
        raise
    for obj, is_hook in applied:
        if is_hook and "HookSucceeded" in annotations(obj).get(HOOK_DELETE, ""):
            await cluster.delete(obj)
    _mark_hooks(result, applied, "Succeeded")


def _mark_hooks(result: SyncResult, applied: list[tuple[Obj, bool]], phase: str) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o, is_hook in applied if is_hook}
    for entry in result.resources:
        if entry.get("hookType") and (entry["kind"], entry["name"]) in names and entry["hookPhase"] == "Running":
            entry["hookPhase"] = phase
            if phase == "Failed":
                entry["status"] = "SyncFailed"
