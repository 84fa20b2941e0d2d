"""The compose controller: ResourceGraphDefinitions in, generated CRDs and per-instance resources out.

One RGD informer drives `reconcile_rgd`: compile the graph (graph.py) against what the API server
serves, apply the generated CRD, start an informer for its instances and report conditions,
`topologicalOrder` and per-resource dependencies in the RGD status. Each instance is reconciled in
topological order: includeWhen decides inclusion (a resource whose dependency is excluded is excluded
too), templates are rendered with the instance (`schema`) and the observed dependencies, applied with
server-side apply (field manager `kro.run/applyset`, kro's labels), and a resource's readyWhen gates
its dependents. Deletion (finalizer `kro.run/finalizer`) removes resources in reverse topological
layers, each layer only once the one depending on it is gone. Child objects are watched through
label-selected informers, so a status change of a Deployment re-reconciles its instance.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.client.informer import Informer, object_key
from ultraplane.client.leader import LeaderElector
from ultraplane.compose import compat
from ultraplane.compose import graph as graphs
from ultraplane.compose.conditions import now, root_condition, same_status, set_condition
from ultraplane.compose.discovery import Discovery, group_version_path
from ultraplane.compose.expressions import ExpressionError, PendingData, Variables
from ultraplane.compose.rgdcrd import rgd_crd

log = logging.getLogger("ultraplane.compose")
Obj = dict[str, Any]
RGD_PATH = "/apis/kro.run/v1alpha1/resourcegraphdefinitions"
FIELD_MANAGER = "kro.run/applyset"
CRD_MANAGER = "kro"
FINALIZER = "kro.run/finalizer"
OWNED = "kro.run/owned"
REQUEUE_S = 1.0
ALLOW_BREAKING = "kro.run/allow-breaking-changes"
LEASE_NAME = "kro"
EXTERNAL_RESYNC_S = 10.0  # external objects are not watched: ACTIVE instances reading them re-read this often


@dataclass
class Compiled:
    rgd_name: str
    rgd_uid: str
    graph: graphs.Graph
    path: str  # collection path of the instances
    namespaced: bool
    informer: Informer
    resources: dict[str, tuple[str, bool]] = field(default_factory=dict)  # node id -> (plural, namespaced)


class BreakingChange(Exception):
    """The generated CRD would change incompatibly for existing instances."""


class Waiting(Exception):
    """A node cannot be reconciled yet (data pending, dependency not ready, external object missing)."""


class ComposeController:
    def __init__(self, client: KubeClient, workers: int = 4) -> None:
        self.client = client
        self.discovery = Discovery(client)
        self.rgds = Informer(client, RGD_PATH)
        self.compiled: dict[str, Compiled] = {}
        self.children: dict[str, Informer] = {}  # collection path -> informer of kro-owned objects
        self.queue: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()
        self.pending: set[tuple[str, ...]] = set()
        self.active: set[tuple[str, ...]] = set()
        self.dirty: set[tuple[str, ...]] = set()
        self.workers = workers
        self.timers: list[asyncio.TimerHandle] = []
        self.reported: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------------ queue
    def enqueue(self, *key: str) -> None:
        if key in self.active:
            self.dirty.add(key)
        elif key not in self.pending:
            self.pending.add(key)
            self.queue.put_nowait(key)

    def enqueue_after(self, delay: float, *key: str) -> None:
        self.timers.append(asyncio.get_running_loop().call_later(delay, self.enqueue, *key))
        if len(self.timers) > 1000:
            self.timers = [t for t in self.timers if not t.cancelled() and t.when() > time.monotonic()]

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.pending.discard(key)
            self.active.add(key)
            try:
                if key[0] == "rgd":
                    await self.reconcile_rgd(key[1])
                else:
                    await self.reconcile_instance(key[1], key[2])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed reconcile is retried; the controller keeps running
                log.warning("reconcile %s failed: %s", "/".join(key), exc, exc_info=not isinstance(exc, ApiError))
                self.enqueue_after(2.0, *key)
            finally:
                self.active.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(*key)

    async def event(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj` (cluster-scoped objects' events go to `default`, as kube's do), once
        per distinct (object, reason, message), named `<object>.<hex nanoseconds>` like client-go's recorder."""
        meta = obj.get("metadata") or {}
        key = (meta.get("uid", ""), reason, message)
        if key in self.reported:
            return
        self.reported.add(key)
        namespace = meta.get("namespace") or "default"
        stamp = now()
        try:
            await self.client.create(f"/api/v1/namespaces/{namespace}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta.get('name', 'object')}.{time.time_ns():x}", "namespace": namespace},
                "involvedObject": {k: v for k, v in {
                    "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                    "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion")}.items() if v},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": "kro"}, "reportingComponent": "kro", "reportingInstance": "ultraplane"})
        except ApiError as exc:  # events are best effort, as client-go's recorder
            log.warning("event for %s not recorded: %s", meta.get("name"), exc)

    # ------------------------------------------------------------------ lifecycle
    async def install_crd(self) -> None:
        crd = rgd_crd()
        await self.client.apply(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
                                crd, CRD_MANAGER, force=True)
        await self._wait_established(crd["metadata"]["name"])

    async def _wait_established(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            crd = await self.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            if any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in (crd.get("status") or {}).get("conditions") or []):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not established after {timeout:.0f}s")
            await asyncio.sleep(0.1)

    async def run(self, stop: asyncio.Event) -> None:
        await self.install_crd()
        self.rgds.add_handler(lambda o: self.enqueue("rgd", o["metadata"]["name"]),
                              lambda _o, n: self.enqueue("rgd", n["metadata"]["name"]),
                              lambda o: self.enqueue("rgd", o["metadata"]["name"]))
        await self.rgds.start()
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        log.info("compose controller running")
        try:
            await stop.wait()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for timer in self.timers:
                timer.cancel()
            await self.rgds.stop()
            for compiled in self.compiled.values():
                await compiled.informer.stop()
            for informer in self.children.values():
                await informer.stop()

    # ------------------------------------------------------------------ RGDs
    async def _kind_schemas(self, rgd: Obj) -> dict[tuple[str, str], Any]:
        kinds: dict[tuple[str, str], Any] = {}
        for resource in (rgd.get("spec") or {}).get("resources") or []:
            body = (resource or {}).get("template") or (resource or {}).get("externalRef") or {}
            api_version, kind = body.get("apiVersion"), body.get("kind")
            if not isinstance(api_version, str) or not isinstance(kind, str) or (api_version, kind) in kinds:
                continue
            if await self.discovery.resource(api_version, kind, refresh=True) is not None:
                kinds[(api_version, kind)] = await self.discovery.schema(api_version, kind)
        return kinds

    async def reconcile_rgd(self, name: str) -> None:
        rgd = self.rgds.get(name)
        if rgd is None:
            compiled = self.compiled.pop(name, None)
            if compiled is not None:
                await compiled.informer.stop()  # kro keeps the CRD (and instances) of a deleted RGD
            return
        generation = int(rgd["metadata"].get("generation") or 1)
        status = copy.deepcopy(rgd.get("status") or {})
        conditions: list[Obj] = status.get("conditions") or []
        try:
            graph = graphs.build(rgd, await self._kind_schemas(rgd))
        except (graphs.GraphError, ExpressionError) as exc:
            conditions = set_condition(conditions, "GraphAccepted", "False", "InvalidResourceGraph", str(exc),
                                       generation)
            await self.event(rgd, "Warning", "InvalidResourceGraph", str(exc))
            conditions = root_condition(conditions, ["GraphAccepted", "KindReady", "ControllerReady"], generation)
            await self._rgd_status(name, {**status, "state": "Inactive", "conditions": conditions})
            return
        conditions = set_condition(conditions, "GraphAccepted", "True", "Valid", "resource graph and schema are valid",
                                   generation)
        status.update(topologicalOrder=graph.order, resources=[
            {"id": n, **({"dependencies": [{"id": d} for d in sorted(graph.nodes[n].dependencies,
                                                                    key=graph.order.index)]}
                         if graph.nodes[n].dependencies else {})} for n in graph.order])
        try:
            crd_name = graph.crd["metadata"]["name"]
            await self._check_compatible(rgd, graph)
            await self.client.apply(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}",
                                    copy.deepcopy(graph.crd), CRD_MANAGER, force=True)
            await self._wait_established(crd_name)
            self.discovery.forget(graph.api_version)
        except (ApiError, TimeoutError, BreakingChange) as exc:
            message = f"failed to ensure CRD: {exc.message if isinstance(exc, ApiError) else exc}"
            conditions = set_condition(conditions, "KindReady", "False", "Failed", message, generation)
            await self.event(rgd, "Warning", "KindNotReady", message)
            conditions = root_condition(conditions, ["GraphAccepted", "KindReady", "ControllerReady"], generation)
            await self._rgd_status(name, {**status, "state": "Inactive", "conditions": conditions})
            return
        conditions = set_condition(conditions, "KindReady", "True", "Ready",
                                   f"kind {graph.kind} has been accepted and ready", generation)
        await self._start_instances(rgd, graph)
        conditions = set_condition(conditions, "ControllerReady", "True", "Running", "controller is running",
                                   generation)
        conditions = root_condition(conditions, ["GraphAccepted", "KindReady", "ControllerReady"], generation)
        await self._rgd_status(name, {**status, "state": "Active", "conditions": conditions})

    async def _check_compatible(self, rgd: Obj, graph: graphs.Graph) -> None:
        """kro blocks a CRD update that would break existing instances, unless the RGD allows it."""
        annotations = rgd["metadata"].get("annotations") or {}
        if annotations.get(ALLOW_BREAKING) == "true":
            return
        name = graph.crd["metadata"]["name"]
        try:
            existing = await self.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        changes = compat.crd_breaking_changes(existing, copy.deepcopy(graph.crd))
        if changes:
            raise BreakingChange(f"cannot update CRD {name}: breaking changes detected: {compat.summary(changes)}")

    async def _rgd_status(self, name: str, status: Obj) -> None:
        current = self.rgds.get(name) or {}
        if same_status(current.get("status") or {}, status):
            return
        await self.client.patch(f"{RGD_PATH}/{name}/status", {"status": status}, content_type=MERGE)

    async def _start_instances(self, rgd: Obj, graph: graphs.Graph) -> None:
        name = rgd["metadata"]["name"]
        served = await self.discovery.resource(graph.api_version, graph.kind, refresh=True)
        if served is None:
            raise RuntimeError(f"kind {graph.kind} is not served yet")
        path = f"{group_version_path(graph.api_version)}/{served[0]}"
        resources = {}
        for node in graph.nodes.values():
            found = await self.discovery.resource(node.api_version, node.kind)
            if found is None:
                raise RuntimeError(f"{node.api_version} {node.kind} is not served")
            resources[node.id] = found
            if not node.external:
                child_path = f"{group_version_path(node.api_version)}/{found[0]}"
                if child_path not in self.children:
                    informer = Informer(self.client, child_path, {"labelSelector": f"{OWNED}=true"})
                    informer.add_handler(self._child_event, lambda _o, n: self._child_event(n), self._child_event)
                    self.children[child_path] = informer
                    await informer.start()
        previous = self.compiled.get(name)
        if previous is not None and previous.path == path:
            previous.graph, previous.resources = graph, resources
            for obj in previous.informer.list():
                self.enqueue("instance", name, object_key(obj))
            return
        if previous is not None:
            await previous.informer.stop()
        informer = Informer(self.client, path)
        compiled = Compiled(name, rgd["metadata"].get("uid", ""), graph, path, served[1], informer, resources)
        informer.add_handler(lambda o: self.enqueue("instance", name, object_key(o)),
                             lambda _o, n: self.enqueue("instance", name, object_key(n)), None)
        self.compiled[name] = compiled
        await informer.start()

    def _child_event(self, obj: Obj) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        rgd = labels.get("kro.run/resource-graph-definition-name")
        name = labels.get("kro.run/instance-name")
        if rgd and name:
            namespace = labels.get("kro.run/instance-namespace")
            self.enqueue("instance", rgd, f"{namespace}/{name}" if namespace else name)

    # ------------------------------------------------------------------ instances
    def _instance_path(self, compiled: Compiled, instance: Obj) -> str:
        meta = instance["metadata"]
        if compiled.namespaced:
            group_path, _, plural = compiled.path.rpartition("/")
            return f"{group_path}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
        return f"{compiled.path}/{meta['name']}"

    def _object_path(self, compiled: Compiled, node: graphs.Node, namespace: str | None, name: str = "") -> str:
        plural, namespaced = compiled.resources[node.id]
        base = group_version_path(node.api_version)
        if namespaced and namespace:
            base += f"/namespaces/{namespace}"
        return f"{base}/{plural}" + (f"/{name}" if name else "")

    def _labels(self, compiled: Compiled, instance: Obj, node: graphs.Node) -> dict[str, str]:
        meta, graph = instance["metadata"], compiled.graph
        labels = {OWNED: "true", "app.kubernetes.io/managed-by": "kro", "kro.run/node-id": node.id,
                  "kro.run/instance-id": meta.get("uid", ""), "kro.run/instance-name": meta["name"],
                  "kro.run/instance-group": graph.group, "kro.run/instance-version": graph.version,
                  "kro.run/instance-kind": graph.kind, "kro.run/resource-graph-definition-id": compiled.rgd_uid,
                  "kro.run/resource-graph-definition-name": compiled.rgd_name}
        if meta.get("namespace"):
            labels["kro.run/instance-namespace"] = meta["namespace"]
        return labels

    async def reconcile_instance(self, rgd_name: str, key: str) -> None:
        compiled = self.compiled.get(rgd_name)
        if compiled is None:
            return
        instance = compiled.informer.get(key)
        if instance is None:
            return
        if instance["metadata"].get("deletionTimestamp"):
            await self._delete_instance(compiled, instance)
            return
        finalizers = instance["metadata"].get("finalizers") or []
        if FINALIZER not in finalizers:
            instance = await self.client.patch(self._instance_path(compiled, instance),
                                               {"metadata": {"finalizers": [*finalizers, FINALIZER]}},
                                               content_type=MERGE)
        await self._sync_instance(compiled, instance)

    async def _sync_instance(self, compiled: Compiled, instance: Obj) -> None:
        graph = compiled.graph
        variables = Variables(schema=instance)
        skipped: set[str] = set()
        ready: set[str] = set()
        waiting: dict[str, str] = {}
        error: str | None = None
        for node_id in graph.order:
            node = graph.nodes[node_id]
            if node.dependencies & skipped:
                skipped.add(node_id)
                await self._prune(compiled, instance, node, keep=set())
                continue
            blocked = sorted(node.dependencies - ready)
            if blocked:
                waiting[node_id] = f"waiting for {', '.join(blocked)}"
                continue
            try:
                if not all(_truth(e.evaluate(variables), f"includeWhen of {node_id}") for e in node.include_when):
                    skipped.add(node_id)
                    await self._prune(compiled, instance, node, keep=set())
                    continue
                observed = await self._sync_node(compiled, instance, node, variables)
                variables[node_id] = observed
                if self._node_ready(node, observed):
                    ready.add(node_id)
                else:
                    waiting[node_id] = "readyWhen not satisfied"
            except (PendingData, Waiting) as exc:
                waiting[node_id] = str(exc)
            except (ExpressionError, ValueError) as exc:
                error = f"resource {node_id!r}: {exc}"
                break
            except ApiError as exc:
                error = f"resource {node_id!r}: {exc.message}"
                break
        status = dict(instance.get("status") or {})
        for path, template in graph.status_fields:
            roots = {r for e in template.expressions for r in e.roots}
            value: Any = None
            if not roots & skipped and roots <= {"schema", *variables}:
                try:
                    value = template.evaluate(variables)
                except (PendingData, ExpressionError, ValueError):
                    value = None
            _set_path(status, path, value)
        generation = int(instance["metadata"].get("generation") or 1)
        conditions = status.get("conditions") or []
        conditions = set_condition(conditions, "InstanceManaged", "True", "Managed",
                                   "instance is properly managed with finalizers and labels", generation)
        if error:
            conditions = set_condition(conditions, "GraphResolved", "False", "ResolutionFailed", error, generation)
            conditions = set_condition(conditions, "ResourcesReady", "False", "NotReady",
                                       f"resource reconciliation failed: {error}", generation)
            state = "ERROR"
            await self.event(instance, "Warning", "ReconcileError", error)
        else:
            conditions = set_condition(conditions, "GraphResolved", "True", "Resolved",
                                       "runtime graph created and all resources resolved", generation)
            if waiting:
                detail = "; ".join(f"{n}: {w}" for n, w in waiting.items())
                conditions = set_condition(conditions, "ResourcesReady", "False", "NotReady",
                                           f"awaiting resource readiness: {detail}", generation)
                state = "IN_PROGRESS"
            else:
                conditions = set_condition(conditions, "ResourcesReady", "True", "AllResourcesReady",
                                           "all resources are created and ready", generation)
                state = "ACTIVE"
        conditions = root_condition(conditions, ["InstanceManaged", "GraphResolved", "ResourcesReady"], generation)
        status.update(state=state, conditions=conditions)
        await self._instance_status(compiled, instance, status)
        if state != "ACTIVE":
            self.enqueue_after(REQUEUE_S, "instance", compiled.rgd_name, object_key(instance))
        elif any(n.external for n in graph.nodes.values()):
            self.enqueue_after(EXTERNAL_RESYNC_S, "instance", compiled.rgd_name, object_key(instance))

    def _node_ready(self, node: graphs.Node, observed: Any) -> bool:
        if not node.ready_when:
            return True
        items = observed if node.collection else [observed]
        name = "each" if node.collection else node.id
        try:
            return all(_truth(e.evaluate(Variables({name: item})), f"readyWhen of {node.id}")
                       for item in items for e in node.ready_when)
        except PendingData:
            return False

    async def _sync_node(self, compiled: Compiled, instance: Obj, node: graphs.Node, variables: Variables) -> Any:
        namespace = instance["metadata"].get("namespace")
        if node.external:
            body = _render(node, variables)
            meta = body.get("metadata") or {}
            path = self._object_path(compiled, node, meta.get("namespace") or namespace, meta.get("name", ""))
            try:
                return await self.client.get(path)
            except ApiError as exc:
                if exc.code == 404:
                    raise Waiting(f"external reference {meta.get('name')!r} not found") from None
                raise
        if not node.collection:
            return await self._apply(compiled, instance, node, _render(node, variables), namespace)
        dimensions = []
        for iterator, expr in node.for_each:
            values = expr.evaluate(variables)
            if not isinstance(values, list):
                raise ExpressionError(f"forEach iterator {iterator!r} must evaluate to a list, got "
                                      f"{type(values).__name__}")
            dimensions.append((iterator, values))
        combos = graphs.combinations(dimensions)
        applied = []
        for index, combo in enumerate(combos):
            body = _render(node, variables.with_values(combo))
            labels = {"kro.run/collection-index": str(index), "kro.run/collection-size": str(len(combos))}
            applied.append(await self._apply(compiled, instance, node, body, namespace, labels))
        await self._prune(compiled, instance, node, keep={o["metadata"]["uid"] for o in applied})
        return applied

    async def _apply(self, compiled: Compiled, instance: Obj, node: graphs.Node, body: Obj, namespace: str | None,
                     extra_labels: dict[str, str] | None = None) -> Obj:
        meta = body.setdefault("metadata", {})
        if not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ExpressionError("metadata.name must be a non-empty string")
        if compiled.resources[node.id][1]:
            meta.setdefault("namespace", namespace or "default")
        else:
            meta.pop("namespace", None)
        meta["labels"] = {**(meta.get("labels") or {}), **self._labels(compiled, instance, node),
                          **(extra_labels or {})}
        path = self._object_path(compiled, node, meta.get("namespace"), meta["name"])
        return await self.client.apply(path, body, FIELD_MANAGER, force=True)

    async def _owned(self, compiled: Compiled, instance: Obj, node: graphs.Node) -> list[Obj]:
        selector = f"kro.run/instance-id={instance['metadata'].get('uid', '')},kro.run/node-id={node.id}"
        listed = await self.client.list(self._object_path(compiled, node, None), {"labelSelector": selector})
        return listed.get("items") or []

    async def _prune(self, compiled: Compiled, instance: Obj, node: graphs.Node, keep: set[str]) -> None:
        if node.external:
            return
        for obj in await self._owned(compiled, instance, node):
            if obj["metadata"]["uid"] not in keep and not obj["metadata"].get("deletionTimestamp"):
                await self._delete(compiled, node, obj)

    async def _delete(self, compiled: Compiled, node: graphs.Node, obj: Obj) -> None:
        meta = obj["metadata"]
        try:
            await self.client.delete(self._object_path(compiled, node, meta.get("namespace"), meta["name"]),
                                     {"kind": "DeleteOptions", "apiVersion": "v1",
                                      "propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def _delete_instance(self, compiled: Compiled, instance: Obj) -> None:
        graph = compiled.graph
        remaining: list[str] = []
        for layer in graph.reverse_layers():
            for node_id in layer:
                node = graph.nodes[node_id]
                if node.external:
                    continue
                for obj in await self._owned(compiled, instance, node):
                    remaining.append(f"{node_id}/{obj['metadata']['name']}")
                    if not obj["metadata"].get("deletionTimestamp"):
                        await self._delete(compiled, node, obj)
            if remaining:
                break  # the next layer goes once this one is gone
        if remaining:
            status = dict(instance.get("status") or {})
            generation = int(instance["metadata"].get("generation") or 1)
            conditions = set_condition(status.get("conditions") or [], "ResourcesReady", "Unknown", "UnderDeletion",
                                       f"waiting for deletion of {', '.join(remaining)}", generation)
            conditions = root_condition(conditions, ["InstanceManaged", "GraphResolved", "ResourcesReady"],
                                        generation)
            status.update(state="DELETING", conditions=conditions)
            await self._instance_status(compiled, instance, status)
            self.enqueue_after(REQUEUE_S, "instance", compiled.rgd_name, object_key(instance))
            return
        finalizers = [f for f in instance["metadata"].get("finalizers") or [] if f != FINALIZER]
        try:
            await self.client.patch(self._instance_path(compiled, instance),
                                    {"metadata": {"finalizers": finalizers or None,
                                                  "resourceVersion": instance["metadata"]["resourceVersion"]}},
                                    content_type=MERGE)
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise
            if exc.code == 409:
                self.enqueue_after(0.1, "instance", compiled.rgd_name, object_key(instance))

    async def _instance_status(self, compiled: Compiled, instance: Obj, status: Obj) -> None:
        if same_status(instance.get("status") or {}, status):
            return
        try:
            await self.client.update(self._instance_path(compiled, instance) + "/status",
                                     {**instance, "status": status})
        except ApiError as exc:
            if exc.code == 409:  # a newer instance is on its way through the informer
                self.enqueue_after(0.1, "instance", compiled.rgd_name, object_key(instance))
            elif exc.code != 404:
                raise


def _truth(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"{what} must evaluate to a bool, got {type(value).__name__}")
    return value


def _render(node: graphs.Node, variables: dict[str, Any]) -> Obj:
    body = copy.deepcopy(node.template)
    for path, template in node.fields:
        _set_path(body, path, template.evaluate(variables))
    return body


def _set_path(target: Any, path: tuple[Any, ...], value: Any) -> None:
    for segment in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(segment, {})
        else:
            target = target[segment]
    if isinstance(target, dict) and value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


async def serve(kubeconfig: str, stop: asyncio.Event, leader_elect: bool = True,
                ready: Callable[[ComposeController], Awaitable[None]] | None = None) -> None:
    """Run until `stop`; with `leader_elect` only the holder of the kube-system/kro Lease works, so
    replicas can run side by side (kro's controller elects a leader the same way)."""
    client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=32)
    elector = LeaderElector(client, f"{socket.gethostname()}_{uuid.uuid4()}", name=LEASE_NAME)
    holder: asyncio.Task[None] | None = None
    try:
        if leader_elect:
            if not await elector.acquire(stop):
                return
            holder = asyncio.ensure_future(elector.hold(stop))
        controller = ComposeController(client)
        if ready is not None:
            await ready(controller)
        await controller.run(stop)
    finally:
        if holder is not None:
            holder.cancel()
            await elector.release()
        await client.close()
