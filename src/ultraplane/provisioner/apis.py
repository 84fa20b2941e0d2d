"""Karpenter v1's API (karpenter.sh/v1 NodePool and NodeClaim) and the simulated cloud's SimNodeClass.

The CRDs carry Karpenter's group, kinds, printer columns, defaults, enums and patterns (facts taken from
kubernetes-sigs/karpenter pkg/apis/crds), so manifests written for Karpenter apply unchanged. The
simulated cloud's node class lives in its own group, shaped like EC2NodeClass where that makes sense.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ultraplane.client.http import ApiError, KubeClient

log = logging.getLogger("ultraplane.provisioner")
Obj = dict[str, Any]
GROUP = "karpenter.sh"
VERSION = "v1"
NODECLASS_GROUP = "karpenter.ultraplane.io"
NODECLASS_KIND = "SimNodeClass"
NODEPOOLS = f"/apis/{GROUP}/{VERSION}/nodepools"
NODECLAIMS = f"/apis/{GROUP}/{VERSION}/nodeclaims"
NODECLASSES = f"/apis/{NODECLASS_GROUP}/v1/simnodeclasses"

# well-known labels, annotations and taints (Karpenter v1's strings)
NODEPOOL_LABEL = "karpenter.sh/nodepool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
INITIALIZED_LABEL = "karpenter.sh/initialized"
REGISTERED_LABEL = "karpenter.sh/registered"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
ZONE_LABEL = "topology.kubernetes.io/zone"
ARCH_LABEL = "kubernetes.io/arch"
HOSTNAME_LABEL = "kubernetes.io/hostname"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
NODEPOOL_HASH = "karpenter.sh/nodepool-hash"
NODEPOOL_HASH_VERSION = "karpenter.sh/nodepool-hash-version"
NODECLASS_HASH = "karpenter.ultraplane.io/simnodeclass-hash"
DISRUPTED_TAINT = {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}
UNREGISTERED_TAINT = {"key": "karpenter.sh/unregistered", "effect": "NoExecute"}
TERMINATION_FINALIZER = "karpenter.sh/termination"

_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True,
             "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?"
                        r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"}
_DURATION_OR_NEVER = r"^(([0-9]+(s|m|h))+|Never)$"
_LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(\/))?"
              r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _str(**extra: Any) -> Obj:
    return {"type": "string", **extra}


def _obj(properties: Obj, required: list[str] | None = None, **extra: Any) -> Obj:
    out: Obj = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


def _taints() -> Obj:
    taint = _obj({"effect": _str(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                  "key": _str(minLength=1, pattern=_LABEL_KEY), "timeAdded": _str(format="date-time"),
                  "value": _str(pattern=_LABEL_KEY)}, ["effect", "key"])
    return {"type": "array", "items": taint, "x-kubernetes-list-type": "atomic"}


def _requirements() -> Obj:
    req = _obj({"key": _str(maxLength=316, pattern=_LABEL_KEY),
                "minValues": {"type": "integer", "minimum": 1, "maximum": 50},
                "operator": _str(enum=["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Gte", "Lte"]),
                "values": {"type": "array", "items": _str(maxLength=63, pattern=_LABEL_VALUE),
                           "x-kubernetes-list-type": "atomic"}}, ["key", "operator"])
    return {"type": "array", "items": req, "maxItems": 100, "x-kubernetes-list-type": "atomic",
            "x-kubernetes-validations": [
                {"message": "requirements with operator 'In' must have a value defined",
                 "rule": "self.all(x, x.operator == 'In' ? x.values.size() != 0 : true)"}]}


def _node_class_ref() -> Obj:
    return _obj({"group": _str(pattern="^[^/]*$"), "kind": _str(), "name": _str()}, ["group", "kind", "name"])


def _conditions() -> Obj:
    cond = _obj({"lastTransitionTime": _str(format="date-time"), "message": _str(maxLength=32768),
                 "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                 "reason": _str(maxLength=1024), "status": _str(enum=["True", "False", "Unknown"]),
                 "type": _str(maxLength=316)}, ["lastTransitionTime", "status", "type"])
    return {"type": "array", "items": cond, "x-kubernetes-list-map-keys": ["type"], "x-kubernetes-list-type": "map"}


def _claim_spec(with_resources: bool) -> Obj:
    props: Obj = {
        "expireAfter": _str(default="720h", pattern=_DURATION_OR_NEVER),
        "nodeClassRef": _node_class_ref(), "requirements": _requirements(),
        "startupTaints": _taints(), "taints": _taints(),
        "terminationGracePeriod": _str(pattern=r"^([0-9]+(s|m|h))+$"),
    }
    if with_resources:
        props["resources"] = _obj({"requests": {"type": "object", "additionalProperties": _QUANTITY}})
    return _obj(props, ["nodeClassRef", "requirements"])


def _crd(plural: str, kind: str, group: str, columns: list[Obj], spec: Obj, status: Obj,
         short_names: list[str] | None = None, scale: bool = False) -> Obj:
    names: Obj = {"categories": ["karpenter"], "kind": kind, "listKind": f"{kind}List", "plural": plural,
                  "singular": kind.lower()}
    if short_names:
        names["shortNames"] = short_names
    subresources: Obj = {"status": {}}
    if scale:
        subresources["scale"] = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.nodes"}
    # Karpenter's CRDs also list `metadata: {type: object}`; left out because this API server's pruning
    # would then drop ObjectMeta's fields (kube keeps them): see /work/notes/provisioner/APISERVER.md
    schema = _obj({"apiVersion": _str(), "kind": _str(), "spec": spec, "status": status}, ["spec"])
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "names": names, "scope": "Cluster", "versions": [{
                "name": "v1", "served": True, "storage": True, "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema}, "subresources": subresources}]}}


def _col(name: str, path: str, kind: str = "string", priority: int = 0) -> Obj:
    col: Obj = {"name": name, "jsonPath": path, "type": kind}
    if priority:
        col["priority"] = priority
    return col


def nodepool_crd() -> Obj:
    budget = _obj({"duration": _str(pattern=r"^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$"),
                   "nodes": _str(default="10%", pattern=r"^((100|[0-9]{1,2})%|[0-9]+)$"),
                   "reasons": {"type": "array", "maxItems": 50, "x-kubernetes-list-type": "set",
                               "items": _str(enum=["Underutilized", "Empty", "Drifted"])},
                   "schedule": _str(pattern=r"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly))|"
                                            r"((.+)\s(.+)\s(.+)\s(.+)\s(.+))$")}, ["nodes"])
    disruption = _obj({
        "budgets": {"type": "array", "items": budget, "maxItems": 50, "default": [{"nodes": "10%"}],
                    "x-kubernetes-list-type": "atomic"},
        "consolidateAfter": _str(default="0s", pattern=_DURATION_OR_NEVER),
        "consolidationPolicy": _str(default="WhenEmptyOrUnderutilized",
                                    enum=["WhenEmpty", "WhenEmptyOrUnderutilized", "Balanced"]),
    }, default={"consolidateAfter": "0s"})
    template_meta = _obj({"annotations": {"type": "object", "additionalProperties": _str()},
                          "labels": {"type": "object", "maxProperties": 100,
                                     "additionalProperties": _str(maxLength=63, pattern=_LABEL_VALUE)}})
    spec = _obj({
        "disruption": disruption,
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
        "replicas": {"type": "integer", "format": "int64", "minimum": 0},
        "template": _obj({"metadata": template_meta, "spec": _claim_spec(False)}, ["spec"]),
        "weight": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 100},
    }, ["template"])
    status = _obj({"conditions": _conditions(),
                   "nodeClassObservedGeneration": {"type": "integer", "format": "int64"},
                   "nodes": {"type": "integer", "format": "int64", "default": 0},
                   "resources": {"type": "object", "additionalProperties": _QUANTITY}})
    columns = [_col("NodeClass", ".spec.template.spec.nodeClassRef.name"), _col("Nodes", ".status.nodes"),
               _col("Ready", '.status.conditions[?(@.type=="Ready")].status'),
               _col("Age", ".metadata.creationTimestamp", "date"), _col("Weight", ".spec.weight", "integer", 1),
               _col("CPU", ".status.resources.cpu", priority=1),
               _col("Memory", ".status.resources.memory", priority=1)]
    return _crd("nodepools", "NodePool", GROUP, columns, spec, status, scale=True)


def nodeclaim_crd() -> Obj:
    resources = {"type": "object", "additionalProperties": _QUANTITY}
    status = _obj({"allocatable": resources, "capacity": resources, "conditions": _conditions(),
                   "imageID": _str(), "lastPodEventTime": _str(format="date-time"), "nodeName": _str(),
                   "providerID": _str()})
    columns = [_col("Type", r".metadata.labels.node\.kubernetes\.io/instance-type"),
               _col("Capacity", r".metadata.labels.karpenter\.sh/capacity-type"),
               _col("Zone", r".metadata.labels.topology\.kubernetes\.io/zone"),
               _col("Node", ".status.nodeName"), _col("Ready", '.status.conditions[?(@.type=="Ready")].status'),
               _col("Age", ".metadata.creationTimestamp", "date"), _col("ImageID", ".status.imageID", priority=1),
               _col("ID", ".status.providerID", priority=1),
               _col("NodePool", r".metadata.labels.karpenter\.sh/nodepool", priority=1),
               _col("NodeClass", ".spec.nodeClassRef.name", priority=1),
               _col("Drifted", '.status.conditions[?(@.type=="Drifted")].status', priority=1)]
    return _crd("nodeclaims", "NodeClaim", GROUP, columns, _claim_spec(True), status)


def nodeclass_crd() -> Obj:
    """SimNodeClass: EC2NodeClass's shape where it applies (AMI selection, subnets by zone, tags, kubelet)."""
    term = _obj({"id": _str(), "alias": _str(), "tags": {"type": "object", "additionalProperties": _str()}})
    kubelet = _obj({"maxPods": {"type": "integer", "minimum": 0},
                    "systemReserved": {"type": "object", "additionalProperties": _str()},
                    "kubeReserved": {"type": "object", "additionalProperties": _str()}})
    spec = _obj({
        "amiSelectorTerms": {"type": "array", "items": term},
        "subnetSelectorTerms": {"type": "array", "items": term},
        "zones": {"type": "array", "items": _str()},  # the simulated subnets' zones; default: the region's
        "tags": {"type": "object", "additionalProperties": _str()},
        "kubelet": kubelet,
        "launchLatency": _str(default="1s", pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"),
        "unavailableOfferings": {"type": "array", "items": _obj(
            {"instanceType": _str(), "zone": _str(), "capacityType": _str(enum=["on-demand", "spot"])})},
    })
    status = _obj({"conditions": _conditions(), "amis": {"type": "array", "items": _obj(
        {"id": _str(), "name": _str()})}, "subnets": {"type": "array", "items": _obj(
            {"id": _str(), "zone": _str()})}})
    columns = [_col("Ready", '.status.conditions[?(@.type=="Ready")].status'),
               _col("Age", ".metadata.creationTimestamp", "date")]
    return _crd("simnodeclasses", NODECLASS_KIND, NODECLASS_GROUP, columns, spec, status,
                short_names=["simnc", "simncs"])


def all_crds() -> list[Obj]:
    return [nodepool_crd(), nodeclaim_crd(), nodeclass_crd()]


async def _create_or_update(client: KubeClient, path: str, crd: Obj) -> None:
    name = crd["metadata"]["name"]
    try:
        await client.create(path, crd)
    except ApiError as exc:
        if exc.code != 409:
            raise
        current = await client.get(f"{path}/{name}")
        crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await client.update(f"{path}/{name}", crd)


async def install_crds(client: KubeClient, timeout: float = 30.0) -> None:
    """Create (or update) the CRDs, then wait until each is Established and its collection answers."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for crd in all_crds():
        try:
            await _create_or_update(client, path, crd)
        except ApiError as exc:
            if "must be a simple json path" not in exc.message:
                raise
            # an API server whose printer columns cannot read escaped label keys (`node\.kubernetes\.io/...`)
            # gets the columns it can serve
            log.warning("%s: %s; installing without those printer columns", crd["metadata"]["name"], exc.message)
            for version in crd["spec"]["versions"]:
                version["additionalPrinterColumns"] = [c for c in version["additionalPrinterColumns"]
                                                       if "\\" not in c["jsonPath"]]
            await _create_or_update(client, path, crd)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for collection in (NODEPOOLS, NODECLAIMS, NODECLASSES):
        while True:
            try:
                await client.get(collection, {"limit": "1"})
                break
            except ApiError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)
