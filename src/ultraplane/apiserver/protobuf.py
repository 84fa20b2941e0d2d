"""Decoding Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``) into JSON objects.

kubectl's typed generators (``kubectl create namespace|configmap|secret|serviceaccount|deployment|
service|job|cronjob|quota|priorityclass|poddisruptionbudget|role|rolebinding|clusterrole|
clusterrolebinding``, ``kubectl run``, ``kubectl drain``'s Evictions) send built-in objects as protobuf and client-go 1.32 does not fall back to JSON, so the
API server must read them. The envelope is kube's: the magic ``k8s\\0`` followed by a
``runtime.Unknown`` message (typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3,
contentType = 4) whose ``raw`` is the object's own message.

This is a table-driven decoder over the protobuf wire format covering the messages those generators
produce (field numbers as in k8s.io/api and k8s.io/apimachinery). A field the table does not know
is skipped, so a kind outside the table is refused (415) rather than stored half-decoded.
Responses are always JSON; clients accept it.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

MAGIC = b"k8s\x00"

# field number -> (json name, type). Types: str, int, bool, bytes, time, quantity, intorstr,
# msg:<Name>, [str], [msg:<Name>], {str} (map string->string), {bytes}, {quantity}
Schema = dict[int, tuple[str, str]]

MESSAGES: dict[str, Schema] = {
    "TypeMeta": {1: ("apiVersion", "str"), 2: ("kind", "str")},
    "Unknown": {1: ("typeMeta", "msg:TypeMeta"), 2: ("raw", "rawbytes"), 3: ("contentEncoding", "str"),
                4: ("contentType", "str")},
    "ObjectMeta": {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"), 5: ("uid", "str"),
                   6: ("resourceVersion", "str"), 7: ("generation", "int"), 8: ("creationTimestamp", "time"),
                   11: ("labels", "{str}"), 12: ("annotations", "{str}"),
                   13: ("ownerReferences", "[msg:OwnerReference]"), 14: ("finalizers", "[str]")},
    "OwnerReference": {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"), 5: ("apiVersion", "str"),
                       6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")},
    "LabelSelector": {1: ("matchLabels", "{str}"), 2: ("matchExpressions", "[msg:LabelSelectorRequirement]")},
    "LabelSelectorRequirement": {1: ("key", "str"), 2: ("operator", "str"), 3: ("values", "[str]")},
    "Namespace": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "[str]")},
    "ConfigMap": {1: ("metadata", "msg:ObjectMeta"), 2: ("data", "{str}"), 3: ("binaryData", "{bytes}"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "msg:ObjectMeta"), 2: ("data", "{bytes}"), 3: ("type", "str"),
               4: ("stringData", "{str}"), 5: ("immutable", "bool")},
    "ServiceAccount": {1: ("metadata", "msg:ObjectMeta"), 4: ("automountServiceAccountToken", "bool")},
    "Service": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:ServiceSpec")},
    "ServiceSpec": {1: ("ports", "[msg:ServicePort]"), 2: ("selector", "{str}"), 3: ("clusterIP", "str"),
                    4: ("type", "str"), 5: ("externalIPs", "[str]"), 7: ("sessionAffinity", "str"),
                    10: ("externalName", "str")},
    "ServicePort": {1: ("name", "str"), 2: ("protocol", "str"), 3: ("port", "int"), 4: ("targetPort", "intorstr"),
                    5: ("nodePort", "int")},
    "Pod": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:PodSpec")},
    "Deployment": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:DeploymentSpec")},
    "DeploymentSpec": {1: ("replicas", "int"), 2: ("selector", "msg:LabelSelector"),
                       3: ("template", "msg:PodTemplateSpec"), 4: ("strategy", "msg:DeploymentStrategy"),
                       5: ("minReadySeconds", "int"), 6: ("revisionHistoryLimit", "int"), 7: ("paused", "bool"),
                       9: ("progressDeadlineSeconds", "int")},
    "DeploymentStrategy": {1: ("type", "str")},
    "PodTemplateSpec": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:PodSpec")},
    "PodSpec": {2: ("containers", "[msg:Container]"), 3: ("restartPolicy", "str"),
                4: ("terminationGracePeriodSeconds", "int"), 6: ("dnsPolicy", "str"), 7: ("nodeSelector", "{str}"),
                8: ("serviceAccountName", "str"), 10: ("nodeName", "str"), 11: ("hostNetwork", "bool"),
                19: ("schedulerName", "str"), 20: ("initContainers", "[msg:Container]")},
    "Container": {1: ("name", "str"), 2: ("image", "str"), 3: ("command", "[str]"), 4: ("args", "[str]"),
                  5: ("workingDir", "str"), 6: ("ports", "[msg:ContainerPort]"), 7: ("env", "[msg:EnvVar]"),
                  8: ("resources", "msg:ResourceRequirements"), 13: ("terminationMessagePath", "str"),
                  14: ("imagePullPolicy", "str"), 16: ("stdin", "bool"), 17: ("stdinOnce", "bool"),
                  18: ("tty", "bool"), 20: ("terminationMessagePolicy", "str")},
    "ContainerPort": {1: ("name", "str"), 2: ("hostPort", "int"), 3: ("containerPort", "int"),
                      4: ("protocol", "str"), 5: ("hostIP", "str")},
    "EnvVar": {1: ("name", "str"), 2: ("value", "str")},
    "ResourceRequirements": {1: ("limits", "{quantity}"), 2: ("requests", "{quantity}")},
    "SelfSubjectAccessReview": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:SelfSubjectAccessReviewSpec")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "msg:ResourceAttributes"),
                                    2: ("nonResourceAttributes", "msg:NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "str"), 2: ("verb", "str"), 3: ("group", "str"), 4: ("version", "str"),
                           5: ("resource", "str"), 6: ("subresource", "str"), 7: ("name", "str")},
    "NonResourceAttributes": {1: ("path", "str"), 2: ("verb", "str")},
    "SelfSubjectRulesReview": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:SelfSubjectRulesReviewSpec")},
    "SelfSubjectRulesReviewSpec": {1: ("namespace", "str")},
    "SelfSubjectReview": {1: ("metadata", "msg:ObjectMeta")},
    "TokenRequest": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:TokenRequestSpec")},
    "TokenRequestSpec": {1: ("audiences", "[str]"), 3: ("boundObjectRef", "msg:BoundObjectReference"),
                         4: ("expirationSeconds", "int")},
    "BoundObjectReference": {1: ("kind", "str"), 2: ("apiVersion", "str"), 3: ("name", "str"), 4: ("uid", "str")},
    "TokenReview": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:TokenReviewSpec")},
    "TokenReviewSpec": {1: ("token", "str"), 2: ("audiences", "[str]")},
    "Job": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:JobSpec")},
    "JobSpec": {1: ("parallelism", "int"), 2: ("completions", "int"), 3: ("activeDeadlineSeconds", "int"),
                4: ("selector", "msg:LabelSelector"), 5: ("manualSelector", "bool"), 6: ("template", "msg:PodTemplateSpec"),
                7: ("backoffLimit", "int"), 8: ("ttlSecondsAfterFinished", "int"), 9: ("completionMode", "str"),
                10: ("suspend", "bool")},
    "JobTemplateSpec": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:JobSpec")},
    "CronJob": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:CronJobSpec")},
    "CronJobSpec": {1: ("schedule", "str"), 2: ("startingDeadlineSeconds", "int"), 3: ("concurrencyPolicy", "str"),
                    4: ("suspend", "bool"), 5: ("jobTemplate", "msg:JobTemplateSpec"),
                    6: ("successfulJobsHistoryLimit", "int"), 7: ("failedJobsHistoryLimit", "int"),
                    8: ("timeZone", "str")},
    "PodDisruptionBudget": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:PodDisruptionBudgetSpec")},
    "PodDisruptionBudgetSpec": {1: ("minAvailable", "intorstr"), 2: ("selector", "msg:LabelSelector"),
                                3: ("maxUnavailable", "intorstr"), 4: ("unhealthyPodEvictionPolicy", "str")},
    "Eviction": {1: ("metadata", "msg:ObjectMeta"), 2: ("deleteOptions", "msg:DeleteOptions")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "msg:Preconditions"),
                      3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "str"), 5: ("dryRun", "[str]")},
    "Preconditions": {1: ("uid", "str"), 2: ("resourceVersion", "str")},
    "ResourceQuota": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:ResourceQuotaSpec")},
    "ResourceQuotaSpec": {1: ("hard", "{quantity}"), 2: ("scopes", "[str]"), 3: ("scopeSelector", "msg:ScopeSelector")},
    "ScopeSelector": {1: ("matchExpressions", "[msg:ScopedResourceSelectorRequirement]")},
    "ScopedResourceSelectorRequirement": {1: ("scopeName", "str"), 2: ("operator", "str"), 3: ("values", "[str]")},
    "PriorityClass": {1: ("metadata", "msg:ObjectMeta"), 2: ("value", "int"), 3: ("globalDefault", "bool"),
                      4: ("description", "str"), 5: ("preemptionPolicy", "str")},
    "Role": {1: ("metadata", "msg:ObjectMeta"), 2: ("rules", "[msg:PolicyRule]")},
    "ClusterRole": {1: ("metadata", "msg:ObjectMeta"), 2: ("rules", "[msg:PolicyRule]"),
                    3: ("aggregationRule", "msg:AggregationRule")},
    "AggregationRule": {1: ("clusterRoleSelectors", "[msg:LabelSelector]")},
    "PolicyRule": {1: ("verbs", "[str]"), 2: ("apiGroups", "[str]"), 3: ("resources", "[str]"),
                   4: ("resourceNames", "[str]"), 5: ("nonResourceURLs", "[str]")},
    "RoleBinding": {1: ("metadata", "msg:ObjectMeta"), 2: ("subjects", "[msg:Subject]"), 3: ("roleRef", "msg:RoleRef")},
    "Subject": {1: ("kind", "str"), 2: ("apiGroup", "str"), 3: ("name", "str"), 4: ("namespace", "str")},
    "RoleRef": {1: ("apiGroup", "str"), 2: ("kind", "str"), 3: ("name", "str")},
    "Quantity": {1: ("string", "str")},
    "IntOrString": {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "str")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "MapEntry": {1: ("key", "str"), 2: ("value", "rawbytes")},
}

# the kinds a request body may carry: (apiVersion, kind) -> top-level message
TOP_LEVEL = {("v1", "Namespace"): "Namespace", ("v1", "ConfigMap"): "ConfigMap", ("v1", "Secret"): "Secret",
             ("v1", "ServiceAccount"): "ServiceAccount", ("v1", "Service"): "Service", ("v1", "Pod"): "Pod",
             ("apps/v1", "Deployment"): "Deployment",
             ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "SelfSubjectAccessReview",
             ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): "SelfSubjectRulesReview",
             ("authentication.k8s.io/v1", "SelfSubjectReview"): "SelfSubjectReview",
             ("authentication.k8s.io/v1", "TokenRequest"): "TokenRequest",
             ("authentication.k8s.io/v1", "TokenReview"): "TokenReview",
             ("batch/v1", "Job"): "Job", ("batch/v1", "CronJob"): "CronJob",
             ("policy/v1", "PodDisruptionBudget"): "PodDisruptionBudget", ("policy/v1", "Eviction"): "Eviction",
             ("policy/v1beta1", "Eviction"): "Eviction", ("v1", "ResourceQuota"): "ResourceQuota",
             ("scheduling.k8s.io/v1", "PriorityClass"): "PriorityClass",
             ("rbac.authorization.k8s.io/v1", "Role"): "Role",
             ("rbac.authorization.k8s.io/v1", "ClusterRole"): "ClusterRole",
             ("rbac.authorization.k8s.io/v1", "RoleBinding"): "RoleBinding",
             ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "RoleBinding"}


# non-pointer Go fields that JSON omits when zero (Go's protobuf marshalling always writes them)
OMIT_WHEN_ZERO = {("ObjectMeta", "generation"), ("ContainerPort", "hostPort"), ("ServicePort", "nodePort"),
                  ("DeploymentSpec", "minReadySeconds"), ("DeploymentSpec", "paused"), ("Container", "stdin"),
                  ("Container", "stdinOnce"), ("Container", "tty"), ("PodSpec", "hostNetwork"),
                  ("OwnerReference", "controller"), ("OwnerReference", "blockOwnerDeletion"),
                  ("PriorityClass", "globalDefault")}


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field; value is an int or the raw bytes."""
    out = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value = data[pos: pos + length]
            pos += length
        elif wire == 1:
            value = data[pos: pos + 8]
            pos += 8
        elif wire == 5:
            value = data[pos: pos + 4]
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar(kind: str, value: Any) -> Any:
    if kind == "str":
        return bytes(value).decode()
    if kind == "int":
        return _signed(value)
    if kind == "bool":
        return bool(value)
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if kind == "rawbytes":
        return bytes(value)
    if kind == "quantity":
        return decode_message("Quantity", value).get("string", "")
    if kind == "time":
        seconds = decode_message("Time", value).get("seconds", 0)
        if not seconds:
            return None
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "intorstr":
        ios = decode_message("IntOrString", value)
        return ios.get("strVal", "") if ios.get("type") == 1 else ios.get("intVal", 0)
    if kind.startswith("msg:"):
        return decode_message(kind[4:], value)
    raise ProtobufError(f"unknown field type {kind}")


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    schema = MESSAGES[name]
    obj: dict[str, Any] = {}
    for number, _wire, value in _fields(data):
        spec = schema.get(number)
        if spec is None:
            continue
        field, kind = spec
        if kind.startswith("["):
            obj.setdefault(field, []).append(_scalar(kind[1:-1], value))
        elif kind.startswith("{"):
            entry = decode_message("MapEntry", value)
            raw = entry.get("value", b"")
            obj.setdefault(field, {})[entry.get("key", "")] = _scalar(kind[1:-1], raw)
        else:
            decoded = _scalar(kind, value)
            if decoded is None or decoded == "" or (not decoded and (name, field) in OMIT_WHEN_ZERO):
                continue
            obj[field] = decoded
    return obj


def decode_object(body: bytes) -> dict[str, Any]:
    """A ``k8s\\0``-framed protobuf object as its JSON form; ProtobufError for what we cannot read."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    envelope = decode_message("Unknown", body[len(MAGIC):])
    type_meta = envelope.get("typeMeta", {})
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    message = TOP_LEVEL.get((api_version, kind))
    if message is None:
        raise ProtobufError(f"protobuf bodies of kind {api_version}/{kind} are not supported; send JSON")
    obj = decode_message(message, envelope.get("raw", b""))
    return {"apiVersion": api_version, "kind": kind, **obj}
