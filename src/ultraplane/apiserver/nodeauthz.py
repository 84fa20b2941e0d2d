"""kube's Node authorizer (``--authorization-mode=Node,RBAC``): what a kubelet may read and write.

A request from user ``system:node:<name>`` in group ``system:nodes`` is decided here before RBAC
(rbac.py calls ``NodeAuthorizer.authorize`` first); anything this authorizer does not allow is
kube's NoOpinion and falls through to RBAC, whose ``system:node`` ClusterRole is bound to nobody.

- secrets, configmaps, PVCs, PVs, service-account tokens: only objects a pod bound to the node
  references (kube's graph: node <- pod <- secret / configmap / pvc / serviceaccount,
  node <- pod <- pvc <- pv <- secret), read one by one by name.
- pods: get a pod bound to the node, list/watch only with ``spec.nodeName=<node>``, create/delete
  (mirror pods), status updates, evictions; nodes: read its own Node, create/update (and status);
  leases: its own Lease in kube-node-lease. NodeRestriction (noderestriction.py) then checks the
  objects themselves.
- everything else: kube's static NodeRules (the bootstrap ``system:node`` role's rules).

``NodeGraph`` is the graph, reduced to what those lookups need: for each bound pod its node and
the objects it references, and per referenced object a count of references per node, so a
decision is a couple of dict lookups. ``GraphSync`` keeps it current from the watch cache, as
``RbacSync`` keeps the RBAC index; a status update of a bound pod costs one dict lookup and is
not even decoded (a pod's node and references cannot change once it is bound).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ultraplane.apiserver import rbac_policy
from ultraplane.apiserver.rbac import (
    NODE_USER_PREFIX,
    NODES_GROUP,
    Attributes,
    Decision,
    compile_rules,
    current_user,
)
from ultraplane.apiserver.registry import ListOptions, Obj, Registry, Strategy
from ultraplane.apiserver.selectors import SelectorError, parse_field_selector
from ultraplane.apiserver.validation import go_quote
from ultraplane.apiserver.watchcache import follow

log = logging.getLogger("ultraplane.apiserver.nodeauthz")

NODE_LEASE_NAMESPACE = "kube-node-lease"

SECRET, CONFIGMAP, PVC, PV, SERVICEACCOUNT, POD = "secret", "configmap", "pvc", "pv", "serviceaccount", "pod"
Ref = tuple[str, str, str]  # (kind, namespace, name)


def node_identity(user: str, groups: Iterable[str]) -> str | None:
    """kube's NodeIdentity: the node name of a ``system:node:<name>`` user in ``system:nodes``, else None
    (an empty name is a node that cannot be identified)."""
    if not user.startswith(NODE_USER_PREFIX) or NODES_GROUP not in groups:
        return None
    return user[len(NODE_USER_PREFIX):]


# ============================================================================ what a pod references
def _named(ref: Any) -> str:
    return str(ref.get("name") or "") if isinstance(ref, dict) else ""


def _containers(spec: Obj) -> Iterator[Obj]:
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(group) or ():
            if isinstance(c, dict):
                yield c


# in-tree volume sources whose secretRef (kube's VisitPodSecretNames) the kubelet reads
_SECRET_REF_SOURCES = ("cephfs", "cinder", "flexVolume", "rbd", "scaleIO", "iscsi", "storageos")


def pod_secret_names(spec: Obj) -> set[str]:
    """kube's VisitPodSecretNames (all containers)."""
    names = {_named(r) for r in spec.get("imagePullSecrets") or ()}
    for c in _containers(spec):
        names.update(_named(e.get("secretRef")) for e in c.get("envFrom") or () if isinstance(e, dict))
        names.update(_named((e.get("valueFrom") or {}).get("secretKeyRef")) for e in c.get("env") or ()
                     if isinstance(e, dict))
    for v in spec.get("volumes") or ():
        if not isinstance(v, dict):
            continue
        if isinstance(v.get("secret"), dict):
            names.add(str(v["secret"].get("secretName") or ""))
        if isinstance(v.get("azureFile"), dict):
            names.add(str(v["azureFile"].get("secretName") or ""))
        if isinstance(v.get("csi"), dict):
            names.add(_named(v["csi"].get("nodePublishSecretRef")))
        for source in _SECRET_REF_SOURCES:
            if isinstance(v.get(source), dict):
                names.add(_named(v[source].get("secretRef")))
        for p in (v.get("projected") or {}).get("sources") or ():
            if isinstance(p, dict):
                names.add(_named(p.get("secret")))
    names.discard("")
    return names


def pod_configmap_names(spec: Obj) -> set[str]:
    """kube's VisitPodConfigmapNames (all containers)."""
    names: set[str] = set()
    for c in _containers(spec):
        names.update(_named(e.get("configMapRef")) for e in c.get("envFrom") or () if isinstance(e, dict))
        names.update(_named((e.get("valueFrom") or {}).get("configMapKeyRef")) for e in c.get("env") or ()
                     if isinstance(e, dict))
    for v in spec.get("volumes") or ():
        if not isinstance(v, dict):
            continue
        names.add(_named(v.get("configMap")))
        for p in (v.get("projected") or {}).get("sources") or ():
            if isinstance(p, dict):
                names.add(_named(p.get("configMap")))
    names.discard("")
    return names


def pod_claim_names(pod: Obj) -> set[str]:
    """The PVCs a pod uses: its persistentVolumeClaim volumes and its generic ephemeral volumes' claims."""
    names: set[str] = set()
    pod_name = str((pod.get("metadata") or {}).get("name") or "")
    for v in (pod.get("spec") or {}).get("volumes") or ():
        if not isinstance(v, dict):
            continue
        if isinstance(v.get("persistentVolumeClaim"), dict):
            names.add(str(v["persistentVolumeClaim"].get("claimName") or ""))
        elif isinstance(v.get("ephemeral"), dict):
            names.add(f"{pod_name}-{v.get('name', '')}")
    names.discard("")
    return names


def pod_refs(pod: Obj) -> tuple[Ref, ...]:
    """Every object the graph links a bound pod to (kube's Graph.AddPod)."""
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    spec = pod.get("spec") or {}
    refs: set[Ref] = {(SECRET, namespace, n) for n in pod_secret_names(spec)}
    refs.update((CONFIGMAP, namespace, n) for n in pod_configmap_names(spec))
    refs.update((PVC, namespace, n) for n in pod_claim_names(pod))
    if spec.get("serviceAccountName"):
        refs.add((SERVICEACCOUNT, namespace, str(spec["serviceAccountName"])))
    return tuple(refs)


_CSI_NODE_SECRETS = ("nodeStageSecretRef", "nodePublishSecretRef", "nodeExpandSecretRef")


def pv_secret_refs(pv: Obj) -> set[tuple[str, str]]:
    """The (namespace, name) of the secrets the kubelet reads for a PV (kube's VisitPVSecretNames, kubelet-visible
    ones); in-tree sources default the namespace to the claim's."""
    spec = pv.get("spec") or {}
    claim_ns = str((spec.get("claimRef") or {}).get("namespace") or "")
    out: set[tuple[str, str]] = set()
    if isinstance(spec.get("csi"), dict):
        for key in _CSI_NODE_SECRETS:
            ref = spec["csi"].get(key)
            if _named(ref):
                out.add((str(ref.get("namespace") or ""), _named(ref)))
    for source in _SECRET_REF_SOURCES:
        ref = spec.get(source, {}).get("secretRef") if isinstance(spec.get(source), dict) else None
        if _named(ref):
            out.add((str(ref.get("namespace") or claim_ns), _named(ref)))
    azure = spec.get("azureFile")
    if isinstance(azure, dict) and azure.get("secretName"):
        out.add((str(azure.get("secretNamespace") or "default"), str(azure["secretName"])))
    return out


# ============================================================================ the graph
class NodeGraph:
    """Bound pods and PVs, indexed for "is this object related to node N?" in O(1)."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], tuple[str, tuple[Ref, ...]]] = {}  # (ns, name) -> (node, refs)
        self.ref_nodes: dict[Ref, dict[str, int]] = {}  # referenced object -> node -> pods referencing it
        self.pv_claims: dict[str, tuple[str, str]] = {}  # PV name -> its claimRef (ns, name)
        self.pv_secrets: dict[str, set[tuple[str, str]]] = {}  # PV name -> secrets the kubelet reads for it
        self.secret_pvs: dict[tuple[str, str], set[str]] = {}  # secret (ns, name) -> PVs naming it

    # ---------------------------------------------------------------- pods
    def has_pod(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.pods

    def set_pod(self, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node:
            return  # kube's graph ignores pods until they are bound
        old = self.pods.get(key)
        if old is not None and old[0] == node:
            return  # a bound pod's node and references do not change
        self.delete_pod(*key)
        refs = pod_refs(pod)
        self.pods[key] = (node, refs)
        for ref in refs:
            counts = self.ref_nodes.setdefault(ref, {})
            counts[node] = counts.get(node, 0) + 1

    def delete_pod(self, namespace: str, name: str) -> None:
        old = self.pods.pop((namespace, name), None)
        if old is None:
            return
        node, refs = old
        for ref in refs:
            counts = self.ref_nodes.get(ref)
            if counts is None:
                continue
            left = counts.get(node, 0) - 1
            if left > 0:
                counts[node] = left
            else:
                counts.pop(node, None)
                if not counts:
                    del self.ref_nodes[ref]

    # ---------------------------------------------------------------- persistent volumes
    def set_pv(self, pv: Obj) -> None:
        name = str((pv.get("metadata") or {}).get("name") or "")
        self.delete_pv(name)
        claim = (pv.get("spec") or {}).get("claimRef")
        if isinstance(claim, dict) and claim.get("name"):
            self.pv_claims[name] = (str(claim.get("namespace") or ""), str(claim["name"]))
        secrets = pv_secret_refs(pv)
        if secrets:
            self.pv_secrets[name] = secrets
            for secret in secrets:
                self.secret_pvs.setdefault(secret, set()).add(name)

    def delete_pv(self, name: str) -> None:
        self.pv_claims.pop(name, None)
        for secret in self.pv_secrets.pop(name, ()):
            pvs = self.secret_pvs.get(secret)
            if pvs is not None:
                pvs.discard(name)
                if not pvs:
                    del self.secret_pvs[secret]

    # ---------------------------------------------------------------- lookups
    def _referenced(self, ref: Ref, node: str) -> bool:
        counts = self.ref_nodes.get(ref)
        return counts is not None and node in counts

    def _pv_related(self, pv: str, node: str) -> bool:
        claim = self.pv_claims.get(pv)
        return claim is not None and self._referenced((PVC, *claim), node)

    def related(self, node: str, kind: str, namespace: str, name: str) -> bool:
        """kube's hasPathFrom: is there a path from this object to the node?"""
        if kind == POD:
            found = self.pods.get((namespace, name))
            return found is not None and found[0] == node
        if kind == PV:
            return self._pv_related(name, node)
        if self._referenced((kind, namespace, name), node):
            return True
        if kind == SECRET:  # node <- pod <- pvc <- pv <- secret
            return any(self._pv_related(pv, node) for pv in self.secret_pvs.get((namespace, name), ()))
        return False


# ============================================================================ the authorizer
def _no_relationship(node: str) -> Decision:
    return Decision(False, f"no relationship found between node '{node}' and this object")


def _field_equals(a: Attributes, field_name: str, value: str) -> bool:
    """kube's check of a list/watch's field selector for ``field=value`` (``=`` or ``==``)."""
    if not a.field_selector:
        return False
    try:
        requirements = parse_field_selector(a.field_selector).requirements
    except SelectorError:
        return False
    return (field_name, "=", value) in requirements


class NodeAuthorizer:
    """kube's NodeAuthorizer with AuthorizeNodeWithSelectors (on by default since 1.32)."""

    def __init__(self, graph: NodeGraph) -> None:
        self.graph = graph
        self.rules = compile_rules(rbac_policy._node())  # kube's NodeRules: the system:node role's rules
        handlers: dict[tuple[str, str], Callable[[str, Attributes], Decision]] = {
            ("", "secrets"): lambda n, a: self._read_namespaced(n, SECRET, a),
            ("", "configmaps"): lambda n, a: self._read_namespaced(n, CONFIGMAP, a),
            ("", "persistentvolumeclaims"): self._pvc,
            ("", "persistentvolumes"): lambda n, a: self._get(n, PV, a),
            ("resource.k8s.io", "resourceclaims"): lambda n, a: self._get(n, "resourceclaim", a),
            ("storage.k8s.io", "volumeattachments"): lambda n, a: self._get(n, "volumeattachment", a),
            ("", "serviceaccounts"): self._create_token,
            ("coordination.k8s.io", "leases"): self._lease,
            ("storage.k8s.io", "csinodes"): self._csinode,
            ("resource.k8s.io", "resourceslices"): self._resource_slice,
            ("", "nodes"): self._node,
            ("", "pods"): self._pod,
        }
        self.handlers = handlers

    def authorize(self, a: Attributes) -> Decision | None:
        """None when the user is not a node (kube's NoOpinion without a reason); else the decision, whose
        denial RBAC may still overrule."""
        node = node_identity(a.user, a.groups)
        if node is None:
            return None
        if not node:
            return Decision(False, f"unknown node for user {go_quote(a.user)}")
        if a.resource_request:
            handler = self.handlers.get((a.api_group, a.resource))
            if handler is not None:
                return handler(node, a)
        return Decision(any(rule.allows(a) for rule in self.rules))

    # ---------------------------------------------------------------- graph-scoped reads
    def _related(self, node: str, kind: str, a: Attributes) -> Decision:
        if not a.name:
            return Decision(False, "No Object name found")
        if self.graph.related(node, kind, a.namespace, a.name):
            return Decision(True)
        return _no_relationship(node)

    def _get(self, node: str, kind: str, a: Attributes) -> Decision:
        if a.verb != "get":
            return Decision(False, "can only get individual resources of this type")
        if a.subresource:
            return Decision(False, "cannot get subresource")
        return self._related(node, kind, a)

    def _read_namespaced(self, node: str, kind: str, a: Attributes) -> Decision:
        if a.verb not in ("get", "list", "watch"):
            return Decision(False, "can only read resources of this type")
        if a.subresource:
            return Decision(False, "cannot read subresource")
        if not a.namespace:
            return Decision(False, "can only read namespaced object of this type")
        return self._related(node, kind, a)

    def _pvc(self, node: str, a: Attributes) -> Decision:
        if a.subresource != "status":
            return self._get(node, PVC, a)
        if a.verb not in ("update", "patch"):
            return Decision(False, "can only get/update/patch this type")
        return self._related(node, PVC, a)

    def _create_token(self, node: str, a: Attributes) -> Decision:
        if a.verb != "create" or not a.name:
            return Decision(False, "can only create tokens for individual service accounts")
        if a.subresource != "token":
            return Decision(False, "can only create token subresource of serviceaccount")
        if self.graph.related(node, SERVICEACCOUNT, a.namespace, a.name):
            return Decision(True)
        return _no_relationship(node)

    # ---------------------------------------------------------------- objects named after the node
    @staticmethod
    def _lease(node: str, a: Attributes) -> Decision:
        if a.verb not in ("get", "create", "update", "patch", "delete"):
            return Decision(False, "can only get, create, update, patch, or delete a node lease")
        if a.namespace != NODE_LEASE_NAMESPACE:
            return Decision(False, f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace')
        # create has no name yet: NodeRestriction checks the object's
        if a.verb != "create" and a.name != node:
            return Decision(False, "can only access node lease with the same name as the requesting node")
        return Decision(True)

    @staticmethod
    def _csinode(node: str, a: Attributes) -> Decision:
        if a.verb not in ("get", "create", "update", "patch", "delete"):
            return Decision(False, "can only get, create, update, patch, or delete a CSINode")
        if a.subresource:
            return Decision(False, "cannot authorize CSINode subresources")
        if a.verb != "create" and a.name != node:
            return Decision(False, "can only access CSINode with the same name as the requesting node")
        return Decision(True)

    def _resource_slice(self, node: str, a: Attributes) -> Decision:
        if a.subresource:
            return Decision(False, "cannot authorize ResourceSlice subresources")
        if a.verb == "create":
            return Decision(True)
        if a.verb in ("get", "update", "patch", "delete"):
            return self._related(node, "resourceslice", a)
        if a.verb in ("watch", "list", "deletecollection"):
            if _field_equals(a, "nodeName", node):
                return Decision(True)
            return Decision(False, "can only list/watch/deletecollection resourceslices with nodeName field selector")
        return Decision(False, "only the following verbs are allowed for a ResourceSlice: get, watch, list, create, "
                               "update, patch, delete, deletecollection")

    @staticmethod
    def _node(node: str, a: Attributes) -> Decision:
        if not a.subresource:
            if a.verb in ("create", "update", "patch"):
                return Decision(True)  # NodeRestriction limits the node to its own Node object
            if a.verb in ("get", "list", "watch"):
                if a.name == node:
                    return Decision(True)
                if not a.name:
                    return Decision(False, f"node '{node}' cannot read all nodes, only its own Node object")
                return Decision(False, f"node '{node}' cannot read '{a.name}', only its own Node object")
        elif a.subresource == "status" and a.verb in ("update", "patch"):
            return Decision(True)
        return Decision(False)

    def _pod(self, node: str, a: Attributes) -> Decision:
        if not a.subresource:
            if a.verb == "get":
                return self._get(node, POD, a)
            if a.verb in ("list", "watch"):
                if _field_equals(a, "spec.nodeName", node):
                    return Decision(True)
                if a.name:
                    return self._related(node, POD, a)
                return Decision(False, "can only list/watch pods with spec.nodeName field selector")
            if a.verb in ("create", "delete"):
                return Decision(True)  # mirror pods; NodeRestriction checks they are bound to this node
        elif a.subresource == "status" and a.verb in ("update", "patch"):
            return Decision(True)
        elif a.subresource == "eviction" and a.verb == "create":
            return Decision(True)
        return Decision(False)


# ============================================================================ keeping the graph current
class GraphSync:
    """Loads pods and PVs once, then applies the watch cache's events to the graph."""

    def __init__(self, registry: Registry, graph: NodeGraph) -> None:
        self.registry = registry
        self.graph = graph
        self.kinds = {"pods": registry.strategies[("", "v1", "pods")],
                      "persistentvolumes": registry.strategies[("", "v1", "persistentvolumes")]}

    async def load(self) -> dict[str, int]:
        return {plural: await self._list(plural, s) for plural, s in self.kinds.items()}

    async def _list(self, plural: str, s: Strategy) -> int:
        """List one kind and replace what the graph holds of it (in one step, so no request sees it half-filled)."""
        listed = await self.registry.list(s, "", ListOptions())
        graph = self.graph
        if plural == "pods":
            graph.pods.clear()
            graph.ref_nodes.clear()
            for pod in listed["items"]:
                graph.set_pod(pod)
        else:
            graph.pv_claims.clear()
            graph.pv_secrets.clear()
            graph.secret_pvs.clear()
            for pv in listed["items"]:
                graph.set_pv(pv)
        return int(listed["metadata"]["resourceVersion"])

    def apply_pod_event(self, ev: Any) -> None:
        # /registry/pods/<ns>/<name>
        _, _, namespace, name = ev.key.decode().rsplit("/", 3)
        if ev.deleted:
            self.graph.delete_pod(namespace, name)
        elif not self.graph.has_pod(namespace, name) and b'"nodeName"' in ev.value:
            # only an unbound pod (or a new one) can change the graph; status updates of bound pods skip decoding
            obj = ev.obj()
            if obj is not None:
                self.graph.set_pod(obj)

    def apply_pv_event(self, ev: Any) -> None:
        obj = ev.obj()
        if obj is None:
            return
        if ev.deleted:
            self.graph.delete_pv(str(obj["metadata"].get("name") or ""))
        else:
            self.graph.set_pv(obj)

    async def follow(self, plural: str, after: int) -> None:
        s = self.kinds[plural]
        apply = self.apply_pod_event if plural == "pods" else self.apply_pv_event
        await follow(self.registry.cache_for(s), s.prefix, after, apply, lambda: self._list(plural, s),
                     f"node graph {plural}")

    async def run(self, revisions: dict[str, int]) -> None:
        current_user.set(None)
        await asyncio.gather(*(self.follow(p, r) for p, r in revisions.items()))


async def start_node_authorizer(registry: Registry) -> tuple[NodeAuthorizer, asyncio.Task[None]]:
    """The graph loaded before the first request; returns the authorizer and the follower task."""
    graph = NodeGraph()
    sync = GraphSync(registry, graph)
    revisions = await sync.load()
    return NodeAuthorizer(graph), asyncio.ensure_future(sync.run(revisions))
