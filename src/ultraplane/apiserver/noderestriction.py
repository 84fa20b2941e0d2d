"""kube's NodeRestriction admission plugin: a kubelet writes only what belongs to its own node.

The Node authorizer (nodeauthz.py) lets a node create and update Nodes, Leases and pod status in
general, because it cannot see the objects; this plugin checks them. For a user
``system:node:<name>`` in ``system:nodes``:

- nodes: only its own Node; on create no ``configSource`` and no labels outside the kubelet's set,
  on update also no taint changes (kube's texts: ``node "a" is not allowed to modify node "b"``).
- pods: create only mirror pods bound to itself (owned by its Node, referencing no secrets,
  configmaps, PVCs or service account), delete only pods bound to itself, no other update;
  ``status`` only of pods bound to itself and without label changes; ``eviction`` only of its pods.
- leases: only its own, in kube-node-lease; PVCs: only ``status.capacity`` / ``conditions``;
  ``serviceaccounts/token``: only tokens bound to a pod on this node.

Refusals are kube's admission 403: ``<resource> "<name>" is forbidden: <reason>``. Every other user
costs one context-variable read and a string prefix test per write.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from ultraplane.apiserver import errors
from ultraplane.apiserver.nodeauthz import (
    NODE_LEASE_NAMESPACE,
    node_identity,
    pod_configmap_names,
    pod_secret_names,
)
from ultraplane.apiserver.rbac import NODE_USER_PREFIX, current_user
from ultraplane.apiserver.registry import Obj, Registry, Strategy
from ultraplane.apiserver.server import Request, Response
from ultraplane.apiserver.validation import go_quote

MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
NODE_RESTRICTION_LABELS = "node-restriction.kubernetes.io"
# kubeletapis.IsKubeletLabel: the kubernetes.io / k8s.io labels a kubelet may set on its Node
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type", "kubernetes.io/os", "kubernetes.io/arch",
    "beta.kubernetes.io/os", "beta.kubernetes.io/arch"})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")

Handler = Callable[[Request, str, str, str], Awaitable[Response]]


def forbidden(group: str, plural: str, name: str, why: str) -> errors.ApiError:
    """kube's admission.NewForbidden: ``pods "p" is forbidden: <why>``."""
    return errors.forbidden(f"{errors.qualified(group, plural)} {go_quote(name)} is forbidden: {why}",
                            group, plural, name)


def requesting_node() -> str | None:
    """The node name of the request's user; None when it is not a node (most requests: one prefix test)."""
    user = current_user.get()
    if user is None or not user.name.startswith(NODE_USER_PREFIX):
        return None
    return node_identity(user.name, user.groups)


# ---------------------------------------------------------------------------- labels
def _label_namespace(key: str) -> str:
    prefix, sep, _ = key.partition("/")
    return prefix if sep else ""


def _in_domain(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def is_kubelet_label(key: str) -> bool:
    return key in KUBELET_LABELS or any(_in_domain(_label_namespace(key), d) for d in KUBELET_LABEL_NAMESPACES)


def forbidden_labels(new: dict[str, str] | None, old: dict[str, str] | None) -> list[str]:
    """kube's getForbiddenLabels over getModifiedLabels, sorted."""
    new, old = new or {}, old or {}
    modified = {k for k in new.keys() | old.keys() if new.get(k) != old.get(k) or (k in new) != (k in old)}
    out = set()
    for key in modified:
        namespace = _label_namespace(key)
        if _in_domain(namespace, NODE_RESTRICTION_LABELS):
            out.add(key)
        if (_in_domain(namespace, "kubernetes.io") or _in_domain(namespace, "k8s.io")) and not is_kubelet_label(key):
            out.add(key)
    return sorted(out)


# ---------------------------------------------------------------------------- the plugin
class NodeRestriction:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def check(self, op: str, s: Strategy, namespace: str, name: str, subresource: str, obj: Obj | None,
              old: Obj | None) -> Awaitable[None] | None:
        """The registry's write hook (op CREATE / UPDATE / DELETE): raises kube's 403, or returns an awaitable
        for checks that read other objects; None (at once) for every user that is not a node."""
        node = requesting_node()
        if node is None:
            return None
        if op == "CREATE" and obj is not None:
            meta = obj.get("metadata") or {}
            name = name or meta.get("name") or meta.get("generateName") or "Unknown"
        group, plural = s.group, s.plural

        def refuse(why: str) -> errors.ApiError:
            return forbidden(group, plural, name, why)

        if not node:
            raise refuse(f"could not determine node from user {go_quote(NODE_USER_PREFIX)}")
        if (group, plural) == ("", "pods"):
            return self._pod(node, op, subresource, obj, old, refuse)
        if (group, plural) == ("", "nodes"):
            self._node(node, op, name, obj, old, refuse)
        elif (group, plural) == ("", "persistentvolumeclaims"):
            if subresource != "status":
                raise refuse("may only update PVC status")
            if op != "UPDATE":
                raise refuse(f"unexpected operation {go_quote(op)}")
            _pvc_status(node, obj or {}, old or {}, refuse)
        elif (group, plural) == ("coordination.k8s.io", "leases"):
            if namespace != NODE_LEASE_NAMESPACE:
                raise refuse(f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace')
            if name != node:
                raise refuse("can only access node lease with the same name as the requesting node")
        return None

    # ---------------------------------------------------------------- nodes
    @staticmethod
    def _node(node: str, op: str, name: str, obj: Obj | None, old: Obj | None,
              refuse: Callable[[str], errors.ApiError]) -> None:
        if name != node:
            raise refuse(f"node {go_quote(node)} is not allowed to modify node {go_quote(name)}")
        spec = (obj or {}).get("spec") or {}
        labels = ((obj or {}).get("metadata") or {}).get("labels")
        if op == "CREATE":
            if spec.get("configSource") is not None:
                raise refuse(f"node {go_quote(node)} is not allowed to create pods with a non-nil configSource")
            bad = forbidden_labels(labels, None)
            if bad:
                raise refuse(f"node {go_quote(node)} is not allowed to set the following labels: {', '.join(bad)}")
        elif op == "UPDATE" and old is not None:
            old_spec = old.get("spec") or {}
            if spec.get("configSource") is not None and spec.get("configSource") != old_spec.get("configSource"):
                raise refuse(f"node {go_quote(node)} is not allowed to update configSource to a new non-nil "
                             f"configSource")
            if (spec.get("taints") or []) != (old_spec.get("taints") or []):
                raise refuse(f"node {go_quote(node)} is not allowed to modify taints")
            bad = forbidden_labels(labels, (old.get("metadata") or {}).get("labels"))
            if bad:
                raise refuse(f"is not allowed to modify labels: {', '.join(bad)}")  # sic: kube names no node here

    # ---------------------------------------------------------------- pods
    def _pod(self, node: str, op: str, subresource: str, obj: Obj | None, old: Obj | None,
             refuse: Callable[[str], errors.ApiError]) -> Awaitable[None] | None:
        if subresource == "status":
            if op != "UPDATE":
                raise refuse(f"unexpected operation {go_quote(op)}")
            _pod_status(node, obj or {}, old or {}, refuse)
            return None
        if subresource:
            raise refuse(f"unexpected pod subresource {go_quote(subresource)}, only 'status' and 'eviction' are "
                         f"allowed")
        if op == "DELETE":
            if ((old or {}).get("spec") or {}).get("nodeName") != node:
                raise refuse(f"node {go_quote(node)} can only delete pods with spec.nodeName set to itself")
            return None
        if op != "CREATE":
            raise refuse(f"unexpected operation {go_quote(op)}, node {go_quote(node)} can only create and delete "
                         f"mirror pods")
        return self._mirror_pod(node, obj or {}, refuse)

    async def _mirror_pod(self, node: str, pod: Obj, refuse: Callable[[str], errors.ApiError]) -> None:
        """kube's admitPodCreate: a node creates only mirror pods of its static pods."""
        q = go_quote(node)
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        if MIRROR_POD_ANNOTATION not in (meta.get("annotations") or {}):
            raise refuse(f'pod does not have "{MIRROR_POD_ANNOTATION}" annotation, node {q} can only create '
                         f"mirror pods")
        if spec.get("nodeName") != node:
            raise refuse(f"node {q} can only create pods with spec.nodeName set to itself")
        owners = meta.get("ownerReferences") or []
        if len(owners) > 1:
            raise refuse(f"node {q} can only create pods with a single owner reference set to itself")
        if not owners:
            raise refuse(f"node {q} can only create pods with an owner reference set to itself")
        owner = owners[0] if isinstance(owners[0], dict) else {}
        if owner.get("apiVersion") != "v1" or owner.get("kind") != "Node" or owner.get("name") != node:
            raise refuse(f"node {q} can only create pods with an owner reference set to itself")
        if owner.get("controller") is not True:
            raise refuse(f"node {q} can only create pods with a controller owner reference set to itself")
        if owner.get("blockOwnerDeletion") is True:
            raise refuse(f"node {q} must not set blockOwnerDeletion on an owner reference")
        node_obj = await self.registry.get(self.registry.strategies[("", "v1", "nodes")], "", node)  # 404 as kube
        node_uid = (node_obj.get("metadata") or {}).get("uid", "")
        if owner.get("uid", "") != node_uid:
            raise refuse(f"node {node} UID mismatch: expected {owner.get('uid', '')} got {node_uid}")
        if spec.get("serviceAccountName"):
            raise refuse(f"node {q} can not create pods that reference a service account")
        if pod_secret_names(spec):
            raise refuse(f"node {q} can not create pods that reference secrets")
        if pod_configmap_names(spec):
            raise refuse(f"node {q} can not create pods that reference configmaps")
        for v in spec.get("volumes") or ():
            for source in ((v.get("projected") or {}).get("sources") or ()) if isinstance(v, dict) else ():
                if isinstance(source, dict) and source.get("clusterTrustBundle") is not None:
                    raise refuse(f"node {q} can not create pods that reference clustertrustbundles")
        if any(isinstance(v, dict) and v.get("persistentVolumeClaim") is not None for v in spec.get("volumes") or ()):
            raise refuse(f"node {q} can not create pods that reference persistentvolumeclaims")

    # ---------------------------------------------------------------- subresource handlers
    def guard_eviction(self, handler: Handler) -> Handler:
        """pods/eviction: a node evicts only pods bound to itself (kube's admitPodEviction)."""
        pods = self.registry.strategies[("", "v1", "pods")]

        async def serve(request: Request, namespace: str, name: str, verb: str) -> Response:
            node = requesting_node()
            if node is not None:
                if not node:
                    raise forbidden("", "pods", name,
                                    f"could not determine node from user {go_quote(NODE_USER_PREFIX)}")
                pod = await self.registry.get(pods, namespace, name)
                if (pod.get("spec") or {}).get("nodeName") != node:
                    raise forbidden("", "pods", name, f"node {node} can only evict pods with spec.nodeName set to "
                                                      f"itself")
            return await handler(request, namespace, name, verb)

        return serve

    def guard_token_request(self, handler: Handler) -> Handler:
        """serviceaccounts/token: a node asks only for tokens bound to a pod on itself (kube's admitServiceAccount)."""
        pods = self.registry.strategies[("", "v1", "pods")]

        async def serve(request: Request, namespace: str, name: str, verb: str) -> Response:
            node = requesting_node()
            if node is not None and verb == "create":
                from ultraplane.apiserver.app import ApiServer

                def refuse(why: str) -> errors.ApiError:
                    return forbidden("", "serviceaccounts", name, why)

                if not node:
                    raise refuse(f"could not determine node from user {go_quote(NODE_USER_PREFIX)}")
                ref = ((ApiServer.decode_body(request, "TokenRequest").get("spec") or {}).get("boundObjectRef")
                       or {})
                if ref.get("apiVersion") != "v1" or ref.get("kind") != "Pod" or not ref.get("name"):
                    raise refuse("node requested token not bound to a pod")
                if not ref.get("uid"):
                    raise refuse("node requested token with a pod binding without a uid")
                pod = await self.registry.get(pods, namespace, str(ref["name"]))
                if ref["uid"] != (pod.get("metadata") or {}).get("uid"):
                    raise refuse(f"the UID in the bound object reference ({ref['uid']}) does not match the UID in "
                                 f"record. The object might have been deleted and then recreated")
                if (pod.get("spec") or {}).get("nodeName") != node:
                    raise refuse("node requested token bound to a pod scheduled on a different node")
            return await handler(request, namespace, name, verb)

        return serve


def _pod_status(node: str, new: Obj, old: Obj, refuse: Callable[[str], errors.ApiError]) -> None:
    """kube's admitPodStatus, on the submitted pod and the stored one."""
    q = go_quote(node)
    if (old.get("spec") or {}).get("nodeName") != node:
        raise refuse(f"node {q} can only update pod status for pods with spec.nodeName set to itself")
    if ((new.get("metadata") or {}).get("labels") or {}) != ((old.get("metadata") or {}).get("labels") or {}):
        raise refuse(f"node {q} cannot update labels through pod status")

    def claims(pod: Obj) -> list[tuple[Any, Any]]:
        return [(c.get("name"), c.get("resourceClaimName")) for c in (pod.get("status") or {}).get(
            "resourceClaimStatuses") or () if isinstance(c, dict)]

    if claims(new) != claims(old):
        raise refuse(f"node {q} cannot update resource claim statues")  # sic


def _pvc_status(node: str, new: Obj, old: Obj, refuse: Callable[[str], errors.ApiError]) -> None:
    """kube's admitPVCStatus: only status.capacity, conditions and the expansion-recovery fields may change."""

    def comparable(pvc: Obj) -> Obj:
        out = copy.deepcopy(pvc)
        meta = out.setdefault("metadata", {})
        for key in ("resourceVersion", "managedFields"):
            meta.pop(key, None)
        status = out.get("status") or {}
        for key in ("capacity", "conditions", "allocatedResourceStatuses", "allocatedResources"):
            status.pop(key, None)
        return out

    a, b = comparable(old), comparable(new)
    if a != b:
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise refuse(f"node {go_quote(node)} is not allowed to update fields other than status.capacity and "
                     f"status.conditions: {', '.join(changed)}")
