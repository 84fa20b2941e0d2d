"""The application controller: Applications in the control namespace (default `argocd`) compared with their git
source and synced to their destination.

Each Application is reconciled when it changes and every `resync` seconds: check its AppProject, resolve the
destination (the own cluster or an Argo CD cluster Secret), render the source at the resolved commit, compare
every manifest with the live object (diff.py), assess health, then run the requested or automated sync
(sync.py) and write status (sync, health, resources, conditions, operationState, history). Problems become
Argo's conditions (InvalidSpecError, ComparisonError, SharedResourceWarning, SyncError) plus an Event; the
controller never stops for them. The per-resource diff of an OutOfSync app is kept in the
`gitops.ultraplane.dev/diff` annotation (JSON) so `kubectl get` shows it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import fnmatch
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ultraplane.client import kubeconfig
from ultraplane.client.discovery import Resource, group_of
from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.gitops import health, render
from ultraplane.gitops.crds import install_crds
from ultraplane.gitops.diff import diff
from ultraplane.gitops.git import GitError, RepoCache
from ultraplane.gitops.sync import (
    INSTANCE_LABEL,
    Cluster,
    SyncFailed,
    SyncResult,
    hook_phases,
    options,
    run_sync,
    wave,
)

log = logging.getLogger("ultraplane.gitops")
Obj = dict[str, Any]
API = "/apis/argoproj.io/v1alpha1"
IN_CLUSTER = "https://kubernetes.default.svc"
CLUSTER_SECRET_LABEL = "argocd.argoproj.io/secret-type"
DIFF_ANNOTATION = "gitops.ultraplane.dev/diff"
HISTORY_LIMIT = 10


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str, default: float) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text or "")
    if not text or not match:
        return default
    h, m, s = match.groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)


def glob_permitted(value: str, patterns: list[str]) -> bool:
    """Argo's glob lists: permitted when a pattern matches and no `!pattern` does."""
    denied = any(p.startswith("!") and fnmatch.fnmatchcase(value, p[1:]) for p in patterns)
    return not denied and any(not p.startswith("!") and fnmatch.fnmatchcase(value, p) for p in patterns)


class Controller:
    def __init__(self, client: KubeClient, namespace: str = "argocd", resync: float = 3.0,
                 cache_dir: Path | None = None, workers: int = 16, wave_timeout: float = 300.0) -> None:
        self.client = client
        self.namespace = namespace
        self.resync = resync
        self.wave_timeout = wave_timeout
        self.owns_cache = cache_dir is None  # a temporary cache is removed when the controller stops
        self.repos = RepoCache(cache_dir or Path(tempfile.mkdtemp(prefix="ultraplane-gitops-cache-")), resync)
        # (priority, seq, app): changes (0) go ahead of periodic resyncs (1), so a drift is not healed only
        # after every app's resync has been worked off
        self.queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self.queued: dict[str, int] = {}
        self.sequence = 0
        self.workers = workers
        self.clusters: dict[str, Cluster] = {}
        self.local = Cluster("in-cluster", IN_CLUSTER, client)
        self.seen_specs: dict[str, str] = {}
        self.active: set[str] = set()
        self.live_watches: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.dirty: set[str] = set()

    @property
    def apps_path(self) -> str:
        return f"{API}/namespaces/{self.namespace}/applications"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await install_crds(self.client)
        await self._ensure_namespace(self.client, self.namespace)
        default_project = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
                           "metadata": {"name": "default", "namespace": self.namespace},
                           "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                                    "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}}
        try:
            await self.client.create(f"{API}/namespaces/{self.namespace}/appprojects", default_project)
        except ApiError as exc:
            if exc.code != 409:
                raise

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        tasks = [asyncio.ensure_future(self._watch_apps()), asyncio.ensure_future(self._ticker())]
        tasks += [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        from ultraplane.gitops.appset import AppSetController

        appsets = AppSetController(self.client, self.namespace, self.repos, self.resync)
        tasks.append(asyncio.ensure_future(appsets.run()))
        await stop.wait()
        for task in [*tasks, *self.live_watches.values()]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.owns_cache:
            shutil.rmtree(self.repos.root, ignore_errors=True)

    def enqueue(self, key: str, resync: bool = False) -> None:
        priority = 1 if resync else 0
        if self.queued.get(key, 2) > priority:
            self.queued[key] = priority
            self.sequence += 1
            self.queue.put_nowait((priority, self.sequence, key))

    async def _ticker(self) -> None:
        while True:
            try:
                for app in (await self.client.list(self.apps_path)).get("items") or []:
                    self.enqueue(app["metadata"]["name"], resync=True)
            except (ApiError, OSError) as exc:
                log.warning("listing applications: %s", exc)
            await asyncio.sleep(self.resync)

    async def _watch_apps(self) -> None:
        """Spec or operation changes reconcile at once (status writes do not)."""
        while True:
            try:
                async for event in self.client.watch(self.apps_path):
                    obj = event.get("object") or {}
                    name = (obj.get("metadata") or {}).get("name")
                    if not name or event.get("type") not in ("ADDED", "MODIFIED"):
                        continue
                    fingerprint = json.dumps([obj.get("spec"), obj.get("operation")], sort_keys=True)
                    if self.seen_specs.get(name) != fingerprint:
                        self.seen_specs[name] = fingerprint
                        self.enqueue(name)
            except (ApiError, OSError) as exc:
                log.warning("watching applications: %s", exc)
            await asyncio.sleep(0.5)

    async def _worker(self) -> None:
        while True:
            priority, _, name = await self.queue.get()
            if self.queued.get(name) != priority:
                continue  # an older entry of an app re-queued with a higher priority, or already done
            del self.queued[name]
            if name in self.active:  # one reconcile per app at a time; run again when the current one ends
                self.dirty.add(name)
                continue
            self.active.add(name)
            try:
                await self.reconcile(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling application %s", name)
            finally:
                self.active.discard(name)
                if name in self.dirty:
                    self.dirty.discard(name)
                    self.enqueue(name)

    def watch_live(self, cluster: Cluster, resource: Resource) -> None:
        """Drift is noticed when it happens, not at the next resync: one watch per tracked kind and cluster,
        selecting objects that carry the tracking label, re-reconciles the app a changed object belongs to."""
        key = (cluster.server, resource.group_resource)
        if key not in self.live_watches and "watch" in resource.verbs:
            self.live_watches[key] = asyncio.ensure_future(self._live_watch(cluster, resource))

    async def _live_watch(self, cluster: Cluster, resource: Resource) -> None:
        path, selector = resource.collection(), {"labelSelector": INSTANCE_LABEL}
        version = ""
        while True:
            try:
                if not version:
                    version = ((await cluster.client.list(path, {**selector, "limit": 1})).get("metadata")
                               or {}).get("resourceVersion", "")
                async for event in cluster.client.watch(path, {**selector, "resourceVersion": version,
                                                               "allowWatchBookmarks": True}):
                    if event.get("type") == "ERROR":
                        version = ""
                        break
                    meta = (event.get("object") or {}).get("metadata") or {}
                    version = meta.get("resourceVersion", version)
                    owner = (meta.get("labels") or {}).get(INSTANCE_LABEL)
                    if owner and event.get("type") in ("MODIFIED", "DELETED"):
                        self.enqueue(owner)
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError) as exc:
                log.warning("watching %s on %s: %s", resource.group_resource, cluster.server, exc)
                version = ""
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ helpers
    async def _ensure_namespace(self, client: KubeClient, name: str) -> None:
        try:
            await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": name}})
        except ApiError as exc:
            if exc.code != 409:
                raise

    async def event(self, app: Obj, reason: str, message: str, warning: bool = False) -> None:
        meta = app["metadata"]
        stamp = now()
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                                   "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")},
                "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
                "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
                "source": {"component": "argocd-application-controller"}}
        try:
            await self.client.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except (ApiError, OSError) as exc:
            log.warning("event for %s: %s", meta["name"], exc)

    async def read_secret(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def cluster_secrets(self) -> list[Obj]:
        listed = await self.client.list(f"/api/v1/namespaces/{self.namespace}/secrets",
                                        {"labelSelector": f"{CLUSTER_SECRET_LABEL}=cluster"})
        return listed.get("items") or []

    async def destination(self, dest: Obj) -> Cluster:
        server, name = dest.get("server", ""), dest.get("name", "")
        if server == IN_CLUSTER or name == "in-cluster" or (not server and not name):
            return self.local
        for secret in await self.cluster_secrets():
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            if (server and data.get("server", "").rstrip("/") == server.rstrip("/")) or (name and data.get("name") == name):
                key = data["server"]
                cached = self.clusters.get(key)
                if cached is None or cached.name != data.get("name", ""):
                    config = json.loads(data.get("config") or "{}")
                    self.clusters[key] = Cluster(data.get("name", ""), data["server"],
                                                 KubeClient.from_kubeconfig_data(argo_kubeconfig(data["server"],
                                                                                                 config)))
                return self.clusters[key]
        raise LookupError(f"there are no clusters with this URL: {server}" if server else
                          f"there are no clusters with this name: {name}")

    async def project_conditions(self, app: Obj) -> list[Obj]:
        spec = app.get("spec") or {}
        name = spec.get("project") or "default"
        try:
            project = await self.client.get(f"{API}/namespaces/{self.namespace}/appprojects/{name}")
        except ApiError as exc:
            if exc.code == 404:
                return [{"type": "InvalidSpecError",
                         "message": f"Application referencing project {name} which does not exist"}]
            raise
        pspec = project.get("spec") or {}
        conditions = []
        repo = (spec.get("source") or {}).get("repoURL", "")
        if not glob_permitted(repo, pspec.get("sourceRepos") or []):
            conditions.append({"type": "InvalidSpecError",
                               "message": f"application repo {repo} is not permitted in project '{name}'"})
        dest = spec.get("destination") or {}
        namespace = dest.get("namespace", "")
        permitted = False
        for allowed in pspec.get("destinations") or []:
            server_ok = (glob_permitted(dest.get("server", ""), [allowed["server"]]) if allowed.get("server")
                         else glob_permitted(dest.get("name", ""), [allowed.get("name", "")]))
            if server_ok and glob_permitted(namespace, [allowed.get("namespace") or "*"]):
                permitted = True
        if not permitted:
            server = dest.get("name") or dest.get("server", "")
            conditions.append({"type": "InvalidSpecError", "message": (
                f"application destination server '{server}' and namespace '{namespace}' do not match any of the "
                f"allowed destinations in project '{name}'")})
        return conditions

    # ------------------------------------------------------------------ reconcile
    async def target_state(self, app: Obj, revision: str | None = None, source: Obj | None = None
                           ) -> tuple[str, list[Obj], str]:
        src = source or app["spec"].get("source") or {}
        url = src.get("repoURL", "")
        try:
            sha = await self.repos.resolve(url, revision or src.get("targetRevision") or "HEAD")
            files = await self.repos.tree(url, sha)
            manifests = await render.render(files, src)
            manifests = await render.resolve_secrets(manifests, self.read_secret)
        except (GitError, render.RenderError) as exc:
            raise render.RenderError(f"Failed to load target state: failed to generate manifest for source 1 of "
                                     f"1: rpc error: code = Unknown desc = {exc}") from None
        return sha, manifests, render.source_type(files, src)

    async def prepare(self, cluster: Cluster, manifests: list[Obj], app_name: str, namespace: str) -> list[Obj]:
        """Default namespaces and the tracking label (as Argo does before applying)."""
        out = []
        for manifest in manifests:
            obj = json.loads(json.dumps(manifest))
            meta = obj.setdefault("metadata", {})
            resource = await cluster.resource(obj)
            if resource.namespaced and not meta.get("namespace"):
                meta["namespace"] = namespace
            if not resource.namespaced:
                meta.pop("namespace", None)
            if not hook_phases(obj):
                meta.setdefault("labels", {})[INSTANCE_LABEL] = app_name
            out.append(obj)
        return out

    async def compare(self, app: Obj, cluster: Cluster, targets: list[Obj]) -> Obj:
        name = app["metadata"]["name"]
        entries, diffs, conditions, healths = [], {}, [], []
        target_keys = set()
        kinds: dict[tuple[str, str], Obj] = {}
        for obj in targets:
            if hook_phases(obj):
                continue
            kinds[(obj["apiVersion"], obj["kind"])] = obj
            meta = obj["metadata"]
            target_keys.add((group_of(obj["apiVersion"]), obj["kind"], meta.get("namespace", ""), meta["name"]))
            live = await cluster.get(obj)
            changes = diff(obj, live)
            owner = ((live or {}).get("metadata") or {}).get("labels", {}).get(INSTANCE_LABEL)
            if live is not None and owner and owner != name:
                conditions.append({"type": "SharedResourceWarning", "message": (
                    f"{obj['kind']}/{meta['name']} is part of applications {self.namespace}/{name} and {owner}")})
            state = health.assess(live)
            entry = self._entry(obj, "OutOfSync" if changes else "Synced", state)
            entry["syncWave"] = wave(obj)
            entries.append(entry)
            if state is not None:
                healths.append(state[0])
            if changes:
                diffs[f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"] = changes
        for (status_entry) in (app.get("status") or {}).get("resources") or []:
            api = f"{status_entry['group']}/{status_entry['version']}" if status_entry.get("group") \
                else status_entry.get("version", "v1")
            kinds.setdefault((api, status_entry["kind"]), {"apiVersion": api, "kind": status_entry["kind"],
                                                           "metadata": {"name": "x"}})
        prune: list[Obj] = []
        kept: set[tuple[str, str, str]] = set()  # require pruning but say Prune=false: no reason to sync
        for (_api, kind), sample in kinds.items():
            try:
                resource = await cluster.resource(sample)
            except SyncFailed:
                continue
            self.watch_live(cluster, resource)
            listed = await cluster.client.list(resource.collection(), {"labelSelector": f"{INSTANCE_LABEL}={name}"})
            for live in listed.get("items") or []:
                meta = live["metadata"]
                key = (resource.group, kind, meta.get("namespace", ""), meta["name"])
                if key in target_keys or meta.get("ownerReferences"):
                    continue
                live.setdefault("apiVersion", resource.api_version)
                live.setdefault("kind", kind)
                prune.append(live)
                entry = self._entry(live, "OutOfSync", None)
                entry["requiresPruning"] = True
                if "Prune=false" in options(live):
                    kept.add((kind, meta.get("namespace", ""), meta["name"]))
                entries.append(entry)
                diffs[f"{kind}/{meta.get('namespace', '')}/{meta['name']}"] = [
                    {"path": "/", "desired": None, "live": "present (requires pruning)"}]
        return {"resources": entries, "diffs": diffs, "conditions": conditions, "prune": prune, "kept": kept,
                "health": health.worst(healths),
                "sync": "OutOfSync" if any(e["status"] == "OutOfSync" for e in entries) else "Synced"}

    @staticmethod
    def _entry(obj: Obj, status: str, state: health.Health) -> Obj:
        meta, api = obj["metadata"], obj["apiVersion"]
        entry: Obj = {"group": group_of(api), "version": api.rpartition("/")[2], "kind": obj["kind"],
                      "namespace": meta.get("namespace", ""), "name": meta["name"], "status": status}
        if state is not None:
            entry["health"] = {"status": state[0], **({"message": state[1]} if state[1] else {})}
        return entry

    async def reconcile(self, name: str) -> None:
        try:
            app = await self.client.get(f"{self.apps_path}/{name}")
        except ApiError as exc:
            if exc.code == 404:
                self.seen_specs.pop(name, None)
                return
            raise
        spec = app.get("spec") or {}
        old_status = app.get("status") or {}
        status: Obj = {k: v for k, v in old_status.items() if k in ("operationState", "history")}
        dest = spec.get("destination") or {}
        conditions = await self.project_conditions(app)
        cluster: Cluster | None = None
        if not conditions:
            try:
                cluster = await self.destination(dest)
            except LookupError as exc:
                conditions.append({"type": "InvalidSpecError", "message": str(exc)})
        if conditions or cluster is None:
            await self._write(app, old_status, {**status, "conditions": conditions,
                                                "sync": {"status": "Unknown"},
                                                "health": {"status": health.UNKNOWN}}, None)
            return
        try:
            sha, manifests, source_type = await self.target_state(app)
            targets = await self.prepare(cluster, manifests, name, dest.get("namespace", ""))
            compared = await self.compare(app, cluster, targets)
        except (render.RenderError, SyncFailed) as exc:
            condition = {"type": "ComparisonError", "message": str(exc)}
            await self._write(app, old_status, {**status, "conditions": [condition],
                                                "sync": {"status": "Unknown"},
                                                "health": old_status.get("health") or {"status": health.UNKNOWN}},
                              None)
            return
        operation = app.get("operation")
        policy = spec.get("syncPolicy") or {}
        automated = policy.get("automated")
        if operation is None and automated is not None and automated.get("enabled", True) is not False:
            actionable = [e for e in compared["resources"] if e["status"] == "OutOfSync"
                          and (e["kind"], e["namespace"], e["name"]) not in compared["kept"]]
            only_prune = all(e.get("requiresPruning") for e in actionable)
            last = (status.get("operationState") or {})
            last_revision = ((last.get("syncResult") or {}).get("revision"))
            if actionable and not (only_prune and not automated.get("prune")):
                if automated.get("selfHeal") or last_revision != sha:
                    if not (last.get("phase") in ("Failed", "Error") and last_revision == sha):
                        operation = {"sync": {"revision": sha, "prune": bool(automated.get("prune"))},
                                     "initiatedBy": {"automated": True}, "automated": True}
        if operation is not None:
            status["operationState"] = await self.operate(app, cluster, operation, sha, targets, compared, status)
            try:
                sha, manifests, source_type = await self.target_state(app)
                targets = await self.prepare(cluster, manifests, name, dest.get("namespace", ""))
                compared = await self.compare({**app, "status": {**old_status, "resources": compared["resources"]}},
                                              cluster, targets)
            except (render.RenderError, SyncFailed) as exc:
                compared = {**compared, "conditions": [{"type": "ComparisonError", "message": str(exc)}]}
        conditions = compared["conditions"]
        op_state = status.get("operationState") or {}
        if op_state.get("phase") in ("Failed", "Error"):
            conditions = conditions + [{"type": "SyncError", "message": op_state.get("message", "")}]
        source = spec.get("source") or {}
        status.update({
            "sync": {"status": compared["sync"], "revision": sha,
                     "comparedTo": {"source": source, "destination": dest}},
            "health": {"status": compared["health"]},
            "resources": compared["resources"], "conditions": conditions, "sourceType": source_type})
        await self._write(app, old_status, status, compared["diffs"], clear_operation=operation is not None
                          and app.get("operation") is not None)

    async def operate(self, app: Obj, cluster: Cluster, operation: Obj, sha: str, targets: list[Obj],
                      compared: Obj, status: Obj) -> Obj:
        spec = app["spec"]
        sync_spec = operation.get("sync") or {}
        policy = spec.get("syncPolicy") or {}
        started = now()
        revision = sync_spec.get("revision")
        source = sync_spec.get("source") or spec.get("source") or {}
        name = app["metadata"]["name"]
        state: Obj = {"operation": operation, "phase": "Running", "message": "", "startedAt": started}
        await self.client.patch(f"{self.apps_path}/{name}", {"status": {"operationState": state}},
                                content_type=MERGE)
        await self.event(app, "OperationStarted", f"Initiated {'automated ' if operation.get('automated') else ''}"
                                                  f"sync to {revision or sha}")
        sync_options = set(policy.get("syncOptions") or []) | set(sync_spec.get("syncOptions") or [])
        retry = policy.get("retry") or {}
        limit = int(retry.get("limit", 0) or 0)
        backoff = retry.get("backoff") or {}
        delay = parse_duration(str(backoff.get("duration", "5s")), 5.0)
        factor = float(backoff.get("factor", 2) or 2)
        max_delay = parse_duration(str(backoff.get("maxDuration", "3m")), 180.0)
        attempt = 0
        while True:
            try:
                if revision and revision != sha or sync_spec.get("source"):
                    target_sha, manifests, _ = await self.target_state(app, revision, source)
                    objs = await self.prepare(cluster, manifests, name, spec["destination"].get("namespace", ""))
                else:
                    target_sha, objs = sha, targets
                if "CreateNamespace=true" in sync_options and spec["destination"].get("namespace"):
                    await self._ensure_namespace(cluster.client, spec["destination"]["namespace"])
                prune_enabled = bool(sync_spec.get("prune"))
                candidates = [] if "Prune=false" in sync_options else compared["prune"]
                result = await run_sync(cluster, objs, candidates, prune_enabled,
                                        dry_run=bool(sync_spec.get("dryRun")), wave_timeout=self.wave_timeout)
            except (render.RenderError, SyncFailed, ApiError) as exc:
                target_sha = revision or sha
                result = SyncResult(failed=True, message=str(exc))
            state = {"operation": operation, "phase": "Failed" if result.failed else "Succeeded",
                     "message": result.message, "startedAt": started, "finishedAt": now(),
                     "syncResult": {"revision": target_sha, "source": source, "resources": result.resources}}
            if not result.failed or attempt >= limit and limit >= 0:
                break
            attempt += 1
            state["retryCount"] = attempt
            state["phase"] = "Running"
            state["message"] = f"Retrying attempt #{attempt} at {now()}: {result.message}"
            await self.client.patch(f"{self.apps_path}/{name}", {"status": {"operationState": state}},
                                    content_type=MERGE)
            await asyncio.sleep(min(delay * factor ** (attempt - 1), max_delay))
        if attempt:
            state["retryCount"] = attempt
        if not result.failed and not sync_spec.get("dryRun"):
            history = list(status.get("history") or [])
            history.append({"id": (history[-1]["id"] + 1) if history else 0, "revision": target_sha,
                            "deployedAt": now(), "deployStartedAt": started, "source": source,
                            "initiatedBy": operation.get("initiatedBy") or {}})
            limit_history = int(spec.get("revisionHistoryLimit") or HISTORY_LIMIT)
            status["history"] = history[-limit_history:]
        await self.event(app, "OperationCompleted", f"Sync operation to {target_sha} {state['phase'].lower()}: "
                                                    f"{state['message']}", warning=result.failed)
        return state

    async def _write(self, app: Obj, old: Obj, new: Obj, diffs: dict[str, Any] | None,
                     clear_operation: bool = False) -> None:
        stamp = now()
        old_conditions = {c["type"]: c for c in old.get("conditions") or []}
        for condition in new.get("conditions") or []:
            previous = old_conditions.get(condition["type"])
            condition["lastTransitionTime"] = (previous or {}).get("lastTransitionTime", stamp) if (
                previous and previous.get("message") == condition["message"]) else stamp
            if not previous or previous.get("message") != condition["message"]:
                await self.event(app, condition["type"], condition["message"],
                                 warning=condition["type"].endswith(("Error", "Warning")))
        if not new.get("conditions"):
            new.pop("conditions", None)
        annotations = (app["metadata"].get("annotations") or {})
        diff_text = json.dumps(diffs, sort_keys=True) if diffs else None
        body: Obj = {}
        if {k: v for k, v in new.items() if k != "reconciledAt"} != {k: v for k, v in old.items()
                                                                    if k != "reconciledAt"}:
            new["reconciledAt"] = stamp
            body["status"] = {**{k: None for k in old if k not in new}, **new}
        if annotations.get(DIFF_ANNOTATION) != diff_text:
            body["metadata"] = {"annotations": {DIFF_ANNOTATION: diff_text}}
        if clear_operation:
            body["operation"] = None
        if body:
            try:
                await self.client.patch(f"{self.apps_path}/{app['metadata']['name']}", body, content_type=MERGE)
            except ApiError as exc:
                if exc.code != 404:
                    raise


def argo_kubeconfig(server: str, config: Obj) -> Obj:
    """A kubeconfig from an Argo CD cluster Secret's `config` (bearerToken, tlsClientConfig{insecure, caData,
    certData, keyData}; the data fields are base64 PEM, as in kubeconfig `-data` fields)."""
    tls = config.get("tlsClientConfig") or {}
    cluster: Obj = {"server": server}
    if tls.get("insecure"):
        cluster["insecure-skip-tls-verify"] = True
    if tls.get("caData"):
        cluster["certificate-authority-data"] = tls["caData"]
    user: Obj = {}
    if config.get("bearerToken"):
        user["token"] = config["bearerToken"]
    if tls.get("certData"):
        user["client-certificate-data"] = tls["certData"]
    if tls.get("keyData"):
        user["client-key-data"] = tls["keyData"]
    return {"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}]}


def cluster_secret_from_kubeconfig(path: str, name: str, namespace: str = "argocd", server: str | None = None
                                   ) -> Obj:
    """An Argo CD cluster Secret for the cluster a kubeconfig names (the `argocd cluster add` equivalent)."""
    flat = kubeconfig.flatten(path)
    cluster = flat["clusters"][0]["cluster"]
    user = flat["users"][0]["user"] if flat["users"] else {}
    config = {"tlsClientConfig": {k: v for k, v in {"caData": cluster.get("certificate-authority-data"),
                                                    "certData": user.get("client-certificate-data"),
                                                    "keyData": user.get("client-key-data"),
                                                    "insecure": cluster.get("insecure-skip-tls-verify")}.items()
                                  if v}}
    if user.get("token"):
        config["bearerToken"] = user["token"]
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"cluster-{name}", "namespace": namespace,
                         "labels": {CLUSTER_SECRET_LABEL: "cluster"}},
            "stringData": {"name": name, "server": server or cluster["server"], "config": json.dumps(config)}}
