"""The built-in resources: one ``Strategy`` each (defaults, validation, table columns, fields).

Defaults follow kube-apiserver's v1 defaulting functions plus what its default admission plugins
add (ServiceAccount, Priority, DefaultTolerationSeconds for pods). Table columns and cells follow
kube-apiserver's printers (pkg/printers/internalversion), since kubectl prints what it gets.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

from ultraplane.apiserver.registry import Column, Obj, Strategy, now_rfc3339
from ultraplane.apiserver.validation import not_supported

# ============================================================================ formatting
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
AGE_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. "
    "It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. "
    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)


def NAME() -> Column:  # noqa: N802 - named like the column it makes
    return Column("Name", "string", "name", NAME_DESCRIPTION)


def AGE() -> Column:  # noqa: N802
    return Column("Age", "string", "", AGE_DESCRIPTION)


def human_duration(seconds_f: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    seconds = int(seconds_f)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def since(timestamp: str | None, now: dt.datetime) -> str:
    if not timestamp:
        return "<unknown>"
    then = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return human_duration((now - then).total_seconds())


def age(obj: Obj, now: dt.datetime) -> str:
    return since(obj["metadata"].get("creationTimestamp"), now)


def format_selector(selector: dict[str, Any] | None) -> str:
    """metav1.FormatLabelSelector: requirements sorted by key."""
    if not selector:
        return "<none>"
    parts: list[tuple[str, str]] = []
    for k, v in (selector.get("matchLabels") or {}).items():
        parts.append((k, f"{k}={v}"))
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), sorted(expr.get("values") or [])
        if op == "In":
            parts.append((key, f"{key} in ({','.join(values)})"))
        elif op == "NotIn":
            parts.append((key, f"{key} notin ({','.join(values)})"))
        elif op == "Exists":
            parts.append((key, key))
        elif op == "DoesNotExist":
            parts.append((key, f"!{key}"))
    text = ",".join(p for _, p in sorted(parts))
    return text or "<none>"


def format_map_selector(selector: dict[str, str] | None) -> str:
    if not selector:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def containers_images(template_spec: dict[str, Any]) -> tuple[str, str]:
    containers = template_spec.get("containers") or []
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def required(field: str) -> dict[str, Any]:
    return {"reason": "FieldValueRequired", "message": "Required value", "field": field}


# ============================================================================ pods
NOT_READY_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]


def image_pull_policy(image: str) -> str:
    """Always for :latest or an untagged image, IfNotPresent for a tag or digest."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "Always"
    return "Always" if last.rsplit(":", 1)[1] == "latest" else "IfNotPresent"


def default_container(c: dict[str, Any]) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    if c.get("image"):
        c.setdefault("imagePullPolicy", image_pull_policy(c["image"]))
    c.setdefault("resources", {})
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):  # SetDefaults_Probe, _HTTPGetAction
        probe = c.get(kind)
        if isinstance(probe, dict):
            for field_name, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                                      ("failureThreshold", 3)):
                probe.setdefault(field_name, value)
            if isinstance(probe.get("httpGet"), dict):
                probe["httpGet"].setdefault("path", "/")
                probe["httpGet"].setdefault("scheme", "HTTP")
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for env in c.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("fieldRef")
        if ref is not None:
            ref.setdefault("apiVersion", "v1")


def default_pod_spec(spec: dict[str, Any]) -> None:
    """SetDefaults_PodSpec (shared by pods and every pod template)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        default_container(c)
    for v in spec.get("volumes") or []:
        if "configMap" in v:
            v["configMap"].setdefault("defaultMode", 420)
        if "secret" in v:
            v["secret"].setdefault("defaultMode", 420)
        if "emptyDir" in v and v["emptyDir"] is None:
            v["emptyDir"] = {}


def default_template(obj: Obj) -> None:
    template = obj.setdefault("spec", {}).setdefault("template", {})
    template.setdefault("metadata", {})
    default_pod_spec(template.setdefault("spec", {}))


def pod_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    default_pod_spec(spec)
    spec.setdefault("enableServiceLinks", True)
    # admission: ServiceAccount, Priority, DefaultTolerationSeconds
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for t in NOT_READY_TOLERATIONS:
        if not any(x.get("key") == t["key"] and x.get("effect") in (None, "", "NoExecute") for x in tolerations):
            tolerations.append(dict(t))


def pod_prepare_create(obj: Obj) -> None:
    spec = obj.get("spec") or {}
    containers = spec.get("containers") or []
    has_resources = any((c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get("limits")
                        for c in containers)
    obj["status"] = {"phase": "Pending", "qosClass": "Burstable" if has_resources else "BestEffort"}


def pod_validate(obj: Obj, old: Obj | None) -> list[dict[str, Any]]:
    causes = []
    containers = (obj.get("spec") or {}).get("containers")
    if not containers:
        causes.append(required("spec.containers"))
    for i, c in enumerate(containers or []):
        if not c.get("name"):
            causes.append(required(f"spec.containers[{i}].name"))
        if not c.get("image") and old is None:
            causes.append(required(f"spec.containers[{i}].image"))
    return causes


def pod_grace_period(obj: Obj, options: Obj) -> int:
    """kube's pod CheckGracefulDelete: unscheduled or finished pods go at once; others get their grace period."""
    spec = obj.get("spec") or {}
    if not spec.get("nodeName") or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    requested = options.get("gracePeriodSeconds")
    grace = spec.get("terminationGracePeriodSeconds", 30) if requested is None else requested
    return max(0, int(grace or 0))


def pod_fields(obj: Obj) -> dict[str, str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.restartPolicy": spec.get("restartPolicy", ""),
        "spec.schedulerName": spec.get("schedulerName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
        "status.phase": status.get("phase", ""),
        "status.podIP": status.get("podIP", ""),
        "status.nominatedNodeName": status.get("nominatedNodeName", ""),
    }


def pod_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    total = len(spec.get("containers") or [])
    ready = 0
    restarts = 0
    last_restart = ""  # the newest lastState.terminated.finishedAt: RESTARTS shows "N (5s ago)"
    reason = status.get("reason") or status.get("phase") or ""
    for cs in status.get("containerStatuses") or []:
        restarts += int(cs.get("restartCount") or 0)
        last_restart = max(last_restart, ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt") or "")
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
        elif state.get("running") and cs.get("ready"):
            ready += 1
    if obj["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    if gates:
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        gates_text = f"{sum(1 for g in gates if conds.get(g.get('conditionType')) == 'True')}/{len(gates)}"
    else:
        gates_text = "<none>"
    restarts_text = str(restarts)
    if restarts and last_restart:
        try:
            restarts_text = f"{restarts} ({since(last_restart, now)} ago)"
        except ValueError:  # not a timestamp the printer can read
            pass
    return [obj["metadata"]["name"], f"{ready}/{total}", reason, restarts_text, age(obj, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", gates_text]


# ============================================================================ services
class ClusterIPAllocator:
    """The service CIDR: its first IP (the kubernetes service, the serving certificate's SAN) and membership.
    ClusterIPs themselves are reserved by servicealloc.ServiceAllocator."""

    def __init__(self, cidr: str = "10.96.0.0/12") -> None:
        self.network = ipaddress.ip_network(cidr)

    def first(self) -> str:
        return str(next(self.network.hosts()))

    def contains(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self.network
        except ValueError:
            return False


def service_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    if spec["type"] != "ExternalName":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if spec.get("clusterIP") and "clusterIPs" not in spec:
            spec["clusterIPs"] = [spec["clusterIP"]]
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def service_validate(obj: Obj, old: Obj | None) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    causes = []
    if spec.get("type") != "ExternalName" and not spec.get("ports") and spec.get("clusterIP") != "None":
        causes.append(required("spec.ports"))
    if old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        if before and spec.get("clusterIP") != before:
            causes.append({"reason": "FieldValueInvalid", "field": "spec.clusterIPs[0]",
                           "message": f"Invalid value: []string{{\"{spec.get('clusterIP', '')}\"}}: "
                                      f"may not change once set"})
    return causes


def service_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    external = "<none>"
    if stype == "ExternalName":
        external = spec.get("externalName", "<none>")
    elif spec.get("externalIPs"):
        external = ",".join(spec["externalIPs"])
    elif stype == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress) or "<pending>"
    ports = []
    for p in spec.get("ports") or []:
        if p.get("nodePort"):
            ports.append(f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}")
        else:
            ports.append(f"{p['port']}/{p.get('protocol', 'TCP')}")
    return [obj["metadata"]["name"], stype, spec.get("clusterIP") or "<none>", external,
            ",".join(ports) or "<none>", age(obj, now), format_map_selector(spec.get("selector"))]


def endpoints_row(obj: Obj, now: dt.datetime) -> list[Any]:
    addrs = []
    for subset in obj.get("subsets") or []:
        ports = subset.get("ports") or []
        for a in subset.get("addresses") or []:
            if ports:
                addrs.extend(f"{a.get('ip')}:{p.get('port')}" for p in ports)
            else:
                addrs.append(a.get("ip", ""))
    if not addrs:
        text = "<none>"
    elif len(addrs) > 3:
        text = ",".join(addrs[:3]) + f" + {len(addrs) - 3} more..."
    else:
        text = ",".join(addrs)
    return [obj["metadata"]["name"], text, age(obj, now)]


# ============================================================================ namespaces, config
def namespace_defaults(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")
    name = obj["metadata"].get("name")
    if name:
        labels = obj["metadata"].get("labels") or {}
        labels["kubernetes.io/metadata.name"] = name
        obj["metadata"]["labels"] = labels


def namespace_prepare_create(obj: Obj) -> None:
    obj["status"] = {"phase": "Active"}


def secret_defaults(obj: Obj) -> None:
    import base64

    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if string_data:
        data = obj.get("data") or {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


def node_row(obj: Obj, now: dt.datetime) -> list[Any]:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = conditions.get("Ready")
    # kube's printNode: any Ready status but True (False or Unknown) is NotReady; no Ready condition is Unknown
    text = "Ready" if ready == "True" else "Unknown" if ready is None else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    roles = sorted(k.split("/", 1)[1] for k in (obj["metadata"].get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1])
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [obj["metadata"]["name"], text, ",".join(roles) or "<none>", age(obj, now),
            info.get("kubeletVersion", ""), addresses.get("InternalIP") or "<none>",
            addresses.get("ExternalIP") or "<none>", info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


def event_row(obj: Obj, now: dt.datetime) -> list[Any]:
    involved = obj.get("involvedObject") or {}
    source = obj.get("source") or {}
    first = obj.get("firstTimestamp") or obj.get("eventTime") or obj["metadata"].get("creationTimestamp")
    last = obj.get("lastTimestamp") or first
    kind = involved.get("kind", "")
    obj_text = f"{kind.lower()}/{involved.get('name', '')}"
    src = source.get("component", "")
    if source.get("host"):
        src += f", {source['host']}"
    return [since(_trim_micro(last), now), obj.get("type", ""), obj.get("reason", ""), obj_text,
            involved.get("fieldPath", ""), src, (obj.get("message") or "").strip(), since(_trim_micro(first), now),
            int(obj.get("count") or 1), obj["metadata"]["name"]]


def _trim_micro(ts: str | None) -> str | None:
    if ts and "." in ts:
        return ts.split(".", 1)[0] + "Z"
    return ts


# events.k8s.io/v1 Event <-> core/v1 Event (the stored form): kube's field mapping
_EVENTS_V1_TO_CORE = {"regarding": "involvedObject", "note": "message", "reportingController": "reportingComponent",
                      "deprecatedSource": "source", "deprecatedFirstTimestamp": "firstTimestamp",
                      "deprecatedLastTimestamp": "lastTimestamp", "deprecatedCount": "count"}
_CORE_TO_EVENTS_V1 = {v: k for k, v in _EVENTS_V1_TO_CORE.items()}


def event_to_core(obj: Obj) -> Obj:
    out = {_EVENTS_V1_TO_CORE.get(k, k): v for k, v in obj.items()}
    out["apiVersion"], out["kind"] = "v1", "Event"
    return out


def event_from_core(obj: Obj) -> Obj:
    out = {_CORE_TO_EVENTS_V1.get(k, k): v for k, v in obj.items()}
    if "apiVersion" in out:
        out["apiVersion"] = "events.k8s.io/v1"
    return out


def events_v1_row(obj: Obj, now: dt.datetime) -> list[Any]:
    return event_row(event_to_core(obj), now)


# ============================================================================ apps, batch
def workload_validate(obj: Obj, old: Obj | None) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    causes = []
    selector = spec.get("selector")
    if not selector:
        causes.append(required("spec.selector"))
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if selector and selector.get("matchLabels"):
        if any(labels.get(k) != v for k, v in selector["matchLabels"].items()):
            shown = "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items())) + "}"
            causes.append({"reason": "FieldValueInvalid", "field": "spec.template.metadata.labels",
                           "message": f"Invalid value: {shown}: `selector` does not match template `labels`"})
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers")
    if not containers:
        causes.append(required("spec.template.spec.containers"))
    return causes


def deployment_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        ru = strategy.setdefault("rollingUpdate", {})
        ru.setdefault("maxUnavailable", "25%")
        ru.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    default_template(obj)


def replicaset_defaults(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("replicas", 1)
    default_template(obj)


def statefulset_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    us = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
    us.setdefault("type", "RollingUpdate")
    if us["type"] == "RollingUpdate":
        us.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    default_template(obj)


def daemonset_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    us = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
    us.setdefault("type", "RollingUpdate")
    if us["type"] == "RollingUpdate":
        ru = us.setdefault("rollingUpdate", {})
        ru.setdefault("maxUnavailable", 1)
        ru.setdefault("maxSurge", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    default_template(obj)


def controllerrevision_row(obj: Obj, now: dt.datetime) -> list[Any]:
    """kube's printer: the controlling owner as <kind lowercased>.<group>/<name>."""
    owner = next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
    controller = "<none>"
    if owner:
        group = owner.get("apiVersion", "").rpartition("/")[0]
        controller = f"{owner.get('kind', '').lower()}{'.' + group if group else ''}/{owner.get('name', '')}"
    return [obj["metadata"]["name"], controller, int(obj.get("revision") or 0), age(obj, now)]


def job_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("parallelism", 1)
    if spec.get("completions") is None and spec.get("completionMode") != "Indexed":
        spec.setdefault("completions", spec["parallelism"] if "parallelism" in spec else 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    default_template(obj)
    uid = obj["metadata"].get("uid")
    template_meta = spec["template"].setdefault("metadata", {})
    if uid and not spec.get("manualSelector") and not spec.get("selector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        labels = template_meta.setdefault("labels", {})
        labels.setdefault("batch.kubernetes.io/controller-uid", uid)
        labels.setdefault("batch.kubernetes.io/job-name", obj["metadata"]["name"])
        labels.setdefault("controller-uid", uid)
        labels.setdefault("job-name", obj["metadata"]["name"])


def job_validate(obj: Obj, old: Obj | None) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    causes = []
    if not tspec.get("containers"):
        causes.append(required("spec.template.spec.containers"))
    policy = tspec.get("restartPolicy")
    if policy not in ("Never", "OnFailure"):
        causes.append({"reason": "FieldValueNotSupported", "field": "spec.template.spec.restartPolicy",
                       "message": f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"'})
    return causes


def cronjob_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    job_template = spec.setdefault("jobTemplate", {}).setdefault("spec", {})
    template = job_template.setdefault("template", {})
    default_pod_spec(template.setdefault("spec", {}))


def reset_status(obj: Obj) -> None:
    obj["status"] = {}


def status_with(**zeros: int) -> Any:
    """A create-time status holding the fields Go serializes even when zero (no omitempty)."""
    def prepare(obj: Obj) -> None:
        obj["status"] = dict(zeros)
    return prepare


def workload_wide(obj: Obj) -> list[Any]:
    spec = obj.get("spec") or {}
    names, images = containers_images((spec.get("template") or {}).get("spec") or {})
    return [names, images, format_selector(spec.get("selector"))]


def deployment_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [obj["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            int(status.get("updatedReplicas", 0)), int(status.get("availableReplicas", 0)), age(obj, now),
            *workload_wide(obj)]


def replicaset_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [obj["metadata"]["name"], int(spec.get("replicas", 0)), int(status.get("replicas", 0)),
            int(status.get("readyReplicas", 0)), age(obj, now), *workload_wide(obj)]


def statefulset_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = containers_images((spec.get("template") or {}).get("spec") or {})
    return [obj["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}", age(obj, now),
            names, images]


def daemonset_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    node_selector = format_map_selector(((spec.get("template") or {}).get("spec") or {}).get("nodeSelector"))
    return [obj["metadata"]["name"], int(status.get("desiredNumberScheduled", 0)),
            int(status.get("currentNumberScheduled", 0)), int(status.get("numberReady", 0)),
            int(status.get("updatedNumberScheduled", 0)), int(status.get("numberAvailable", 0)), node_selector,
            age(obj, now), *workload_wide(obj)]


def job_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Complete") == "True":
        state = "Complete"
    elif conditions.get("Failed") == "True":
        state = "Failed"
    elif obj["metadata"].get("deletionTimestamp"):
        state = "Terminating"
    elif conditions.get("Suspended") == "True" or spec.get("suspend"):
        state = "Suspended"
    elif conditions.get("FailureTarget") == "True":
        state = "FailureTarget"
    elif conditions.get("SuccessCriteriaMet") == "True":
        state = "SuccessCriteriaMet"
    else:
        state = "Running"
    completions = spec.get("completions")
    succeeded = status.get("succeeded", 0)
    text = f"{succeeded}/{completions}" if completions is not None else f"{succeeded}/1 of {spec.get('parallelism', 1)}"
    duration = ""
    if status.get("startTime"):
        start = dt.datetime.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        end = now
        if status.get("completionTime"):
            end = dt.datetime.strptime(status["completionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        duration = human_duration((end - start).total_seconds())
    return [obj["metadata"]["name"], state, text, duration, age(obj, now), *workload_wide(obj)]


def cronjob_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    tspec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    names, images = containers_images((tspec.get("template") or {}).get("spec") or {})
    last = since(status["lastScheduleTime"], now) if status.get("lastScheduleTime") else "<none>"
    return [obj["metadata"]["name"], spec.get("schedule", ""), spec.get("timeZone") or "<none>",
            "True" if spec.get("suspend") else "False", len(status.get("active") or []), last, age(obj, now),
            names, images, format_selector(tspec.get("selector"))]


# ============================================================================ storage, policy, discovery
ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}


def access_modes(modes: list[str] | None) -> str:
    return ",".join(ACCESS_MODES.get(m, m) for m in modes or [])


def pv_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")


def pv_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    claim = spec.get("claimRef") or {}
    claim_text = f"{claim.get('namespace')}/{claim.get('name')}" if claim else ""
    return [obj["metadata"]["name"], (spec.get("capacity") or {}).get("storage", ""),
            access_modes(spec.get("accessModes")), spec.get("persistentVolumeReclaimPolicy", ""),
            status.get("phase", ""), claim_text, spec.get("storageClassName", ""),
            spec.get("volumeAttributesClassName") or "<unset>", status.get("reason", ""), age(obj, now),
            spec.get("volumeMode") or "<unset>"]


def pvc_defaults(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")


def pvc_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    bound = status.get("phase") == "Bound"
    return [obj["metadata"]["name"], status.get("phase", ""), spec.get("volumeName", ""),
            (status.get("capacity") or {}).get("storage", "") if bound else "",
            access_modes(status.get("accessModes")) if bound else "", spec.get("storageClassName", ""),
            spec.get("volumeAttributesClassName") or "<unset>", age(obj, now), spec.get("volumeMode") or "<unset>"]


def volume_prepare_create(obj: Obj) -> None:
    obj["status"] = {"phase": "Pending"}


def rc_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    template = spec.get("template")
    if template is not None:
        if not spec.get("selector"):
            spec["selector"] = dict((template.get("metadata") or {}).get("labels") or {})
        default_pod_spec(template.setdefault("spec", {}))


def rc_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = containers_images(((spec.get("template") or {}).get("spec")) or {})
    return [obj["metadata"]["name"], int(spec.get("replicas", 0)), int(status.get("replicas", 0)),
            int(status.get("readyReplicas", 0)), age(obj, now), names, images,
            format_map_selector(spec.get("selector"))]


def quota_row(obj: Obj, now: dt.datetime) -> list[Any]:
    hard = ((obj.get("status") or {}).get("hard")) or ((obj.get("spec") or {}).get("hard")) or {}
    used = (obj.get("status") or {}).get("used") or {}
    requests, limits = [], []
    for name in sorted(hard):
        text = f"{name}: {used.get(name, '0')}/{hard[name]}"
        (limits if name.startswith("limits.") else requests).append(text)
    return [obj["metadata"]["name"], age(obj, now), ", ".join(requests), ", ".join(limits)]


def endpointslice_row(obj: Obj, now: dt.datetime) -> list[Any]:
    ports = ",".join(str(p.get("port", "")) for p in obj.get("ports") or []) or "<unset>"
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    text = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [obj["metadata"]["name"], obj.get("addressType", ""), ports, text or "<unset>", age(obj, now)]


def priorityclass_row(obj: Obj, now: dt.datetime) -> list[Any]:
    return [obj["metadata"]["name"], int(obj.get("value", 0)), bool(obj.get("globalDefault", False)),
            age(obj, now), obj.get("preemptionPolicy") or "PreemptLowerPriority"]


def self_subject_review(review: Obj, user: Any) -> Obj:
    info: dict[str, Any] = {"username": user.name, "groups": user.groups}
    if user.uid:
        info["uid"] = user.uid
    if getattr(user, "extra", None):
        info["extra"] = user.extra
    review["metadata"].setdefault("creationTimestamp", None)
    review["status"] = {"userInfo": info}
    return review


def networkpolicy_defaults(obj: Obj) -> None:
    """kube's defaulting: policyTypes from the rules present (Ingress always, Egress with egress rules); ports TCP."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("podSelector", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", *(["Egress"] if spec.get("egress") else [])]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in (rule or {}).get("ports") or []:
                port.setdefault("protocol", "TCP")


def networkpolicy_validate(obj: Obj, _old: Obj | None) -> list[Any]:
    """kube's ValidateNetworkPolicySpec checks the enums the OpenAPI schema leaves open."""
    spec = obj.get("spec") or {}
    causes = [not_supported(f"spec.policyTypes[{i}]", kind, ["Ingress", "Egress"])
              for i, kind in enumerate(spec.get("policyTypes") or []) if kind not in ("Ingress", "Egress")]
    for direction in ("ingress", "egress"):
        for r, rule in enumerate(spec.get(direction) or []):
            for p, port in enumerate((rule or {}).get("ports") or []):
                if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
                    causes.append(not_supported(f"spec.{direction}[{r}].ports[{p}].protocol", port.get("protocol"),
                                                ["SCTP", "TCP", "UDP"]))
    return causes


def networkpolicy_row(obj: Obj, now: dt.datetime) -> list[Any]:
    selector = (obj.get("spec") or {}).get("podSelector") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))
    return [obj["metadata"]["name"], labels or "<none>", age(obj, now)]


def ingress_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    hosts = [r.get("host") or "*" for r in spec.get("rules") or []] or ["*"]
    addresses = [i.get("ip") or i.get("hostname", "") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
    return [obj["metadata"]["name"], spec.get("ingressClassName") or "<none>", ",".join(hosts),
            ",".join(addresses), "80, 443" if spec.get("tls") else "80", age(obj, now)]


def ingressclass_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    params = spec.get("parameters") or {}
    shown = f"{params.get('apiGroup', '')}/{params.get('kind', '')}/{params.get('name', '')}" if params else "<none>"
    return [obj["metadata"]["name"], spec.get("controller", ""), shown, age(obj, now)]


def wide(*names: str) -> list[Column]:
    return [Column(n, "string", "", "", 1) for n in names]


def builtin_strategies() -> list[Strategy]:
    s = Strategy
    C = Column  # noqa: N806
    WORKLOAD_WIDE = wide("Containers", "Images", "Selector")  # noqa: N806
    return [
        s("", "v1", "Namespace", "namespaces", "namespace", namespaced=False, short_names=["ns"],
          subresources=("status", "finalize"), defaults=namespace_defaults,
          prepare_create=namespace_prepare_create, name_rule="dns1123label",
          fields=lambda o: {"status.phase": (o.get("status") or {}).get("phase", "")},
          columns=[NAME(), C("Status", description="The status of the namespace"), AGE()],
          row=lambda o, now: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), age(o, now)]),
        s("", "v1", "ConfigMap", "configmaps", "configmap", short_names=["cm"],
          columns=[NAME(), C("Data", "integer"), AGE()],
          row=lambda o, now: [o["metadata"]["name"], len(o.get("data") or {}) + len(o.get("binaryData") or {}),
                              age(o, now)]),
        s("", "v1", "Secret", "secrets", "secret", defaults=secret_defaults,
          fields=lambda o: {"type": o.get("type", "")},
          columns=[NAME(), C("Type"), C("Data", "integer"), AGE()],
          row=lambda o, now: [o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}), age(o, now)]),
        s("", "v1", "Pod", "pods", "pod", short_names=["po"], categories=["all"],
          subresources=("status", "binding", "eviction", "log"), defaults=pod_defaults,
          prepare_create=pod_prepare_create, grace_period=pod_grace_period,
          return_deleted_object=True,
          validate=pod_validate, fields=pod_fields, trigger_field="spec.nodeName",
          columns=[NAME(), C("Ready"), C("Status"), C("Restarts"), AGE(),
                   *wide("IP", "Node", "Nominated Node", "Readiness Gates")],
          row=pod_row),
        s("", "v1", "Node", "nodes", "node", namespaced=False, short_names=["no"], storage="minions",
          subresources=("status",), fields=lambda o: {"spec.unschedulable": str(bool(
              (o.get("spec") or {}).get("unschedulable"))).lower()},
          columns=[NAME(), C("Status"), C("Roles"), AGE(), C("Version"),
                   *wide("Internal-IP", "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime")],
          row=node_row),
        s("", "v1", "Service", "services", "service", short_names=["svc"], categories=["all"],
          storage="services/specs", subresources=("status",), defaults=service_defaults, return_deleted_object=True,
          validate=service_validate,
          columns=[NAME(), C("Type"), C("Cluster-IP"), C("External-IP"), C("Port(s)"), AGE(), *wide("Selector")],
          row=service_row),
        s("", "v1", "Endpoints", "endpoints", "endpoints", short_names=["ep"], storage="services/endpoints",
          allow_create_on_update=True, columns=[NAME(), C("Endpoints"), AGE()], row=endpoints_row),
        s("", "v1", "Event", "events", "event", short_names=["ev"], allow_create_on_update=True,
          fields=lambda o: {
              "involvedObject.kind": (o.get("involvedObject") or {}).get("kind", ""),
              "involvedObject.namespace": (o.get("involvedObject") or {}).get("namespace", ""),
              "involvedObject.name": (o.get("involvedObject") or {}).get("name", ""),
              "involvedObject.uid": (o.get("involvedObject") or {}).get("uid", ""),
              "involvedObject.apiVersion": (o.get("involvedObject") or {}).get("apiVersion", ""),
              "involvedObject.resourceVersion": (o.get("involvedObject") or {}).get("resourceVersion", ""),
              "involvedObject.fieldPath": (o.get("involvedObject") or {}).get("fieldPath", ""),
              "reason": o.get("reason", ""), "reportingComponent": o.get("reportingComponent", ""),
              "source": (o.get("source") or {}).get("component", ""), "type": o.get("type", "")},
          columns=[C("Last Seen"), C("Type"), C("Reason"), C("Object"), *wide("Subobject", "Source"),
                   C("Message"), *wide("First Seen", "Count", "Name")],
          row=event_row),
        s("events.k8s.io", "v1", "Event", "events", "event", short_names=["ev"], storage="events",
          allow_create_on_update=True, from_storage=event_from_core, to_storage=event_to_core,
          columns=[C("Last Seen"), C("Type"), C("Reason"), C("Object"), *wide("Subobject", "Source"),
                   C("Message"), *wide("First Seen", "Count", "Name")],
          row=events_v1_row),
        s("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", short_names=["sa"],
          return_deleted_object=True, subresources=("token",),
          columns=[NAME(), C("Secrets", "integer"), AGE()],
          row=lambda o, now: [o["metadata"]["name"], len(o.get("secrets") or []), age(o, now)]),
        s("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision",
          columns=[NAME(), C("Controller"), C("Revision", "integer"), AGE()], row=controllerrevision_row),
        s("coordination.k8s.io", "v1", "Lease", "leases", "lease",
          columns=[NAME(), C("Holder"), AGE()],
          row=lambda o, now: [o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), age(o, now)]),
        s("apps", "v1", "Deployment", "deployments", "deployment", short_names=["deploy"], categories=["all"],
          subresources=("status", "scale"), generation=True, defaults=deployment_defaults,
          prepare_create=reset_status, validate=workload_validate,
          columns=[NAME(), C("Ready"), C("Up-to-date", "integer"), C("Available", "integer"), AGE(),
                   *WORKLOAD_WIDE],
          row=deployment_row),
        s("apps", "v1", "ReplicaSet", "replicasets", "replicaset", short_names=["rs"], categories=["all"],
          subresources=("status", "scale"), generation=True, defaults=replicaset_defaults,
          prepare_create=status_with(replicas=0), validate=workload_validate,
          columns=[NAME(), C("Desired", "integer"), C("Current", "integer"), C("Ready", "integer"), AGE(),
                   *WORKLOAD_WIDE],
          row=replicaset_row),
        s("apps", "v1", "StatefulSet", "statefulsets", "statefulset", short_names=["sts"], categories=["all"],
          subresources=("status", "scale"), generation=True, defaults=statefulset_defaults,
          prepare_create=status_with(replicas=0, availableReplicas=0), validate=workload_validate,
          columns=[NAME(), C("Ready"), AGE(), *wide("Containers", "Images")],
          row=statefulset_row),
        s("apps", "v1", "DaemonSet", "daemonsets", "daemonset", short_names=["ds"], categories=["all"],
          subresources=("status",), generation=True, defaults=daemonset_defaults,
          prepare_create=status_with(currentNumberScheduled=0, numberMisscheduled=0, desiredNumberScheduled=0,
                                     numberReady=0), validate=workload_validate,
          columns=[NAME(), C("Desired", "integer"), C("Current", "integer"), C("Ready", "integer"),
                   C("Up-to-date", "integer"), C("Available", "integer"), C("Node Selector"), AGE(),
                   *WORKLOAD_WIDE],
          row=daemonset_row),
        s("batch", "v1", "Job", "jobs", "job", categories=["all"], subresources=("status",), generation=True,
          defaults=job_defaults, prepare_create=reset_status, validate=job_validate,
          columns=[NAME(), C("Status"), C("Completions"), C("Duration"), AGE(), *WORKLOAD_WIDE],
          row=job_row),
        s("", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", short_names=["rc"],
          categories=["all"], storage="controllers", subresources=("status", "scale"), generation=True,
          defaults=rc_defaults, prepare_create=status_with(replicas=0), scale_path=("spec.replicas", "status.replicas",
                                                                         "spec.selector"),
          columns=[NAME(), C("Desired", "integer"), C("Current", "integer"), C("Ready", "integer"), AGE(),
                   *WORKLOAD_WIDE],
          row=rc_row),
        s("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", namespaced=False, short_names=["pv"],
          return_deleted_object=True,
          subresources=("status",), defaults=pv_defaults, prepare_create=volume_prepare_create,
          columns=[NAME(), C("Capacity"), C("Access Modes"), C("Reclaim Policy"), C("Status"), C("Claim"),
                   C("StorageClass"), C("VolumeAttributesClass"), C("Reason"), AGE(), *wide("VolumeMode")],
          row=pv_row),
        s("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", short_names=["pvc"],
          return_deleted_object=True,
          subresources=("status",), defaults=pvc_defaults, prepare_create=volume_prepare_create,
          columns=[NAME(), C("Status"), C("Volume"), C("Capacity"), C("Access Modes"), C("StorageClass"),
                   C("VolumeAttributesClass"), AGE(), *wide("VolumeMode")],
          row=pvc_row),
        s("", "v1", "LimitRange", "limitranges", "limitrange", short_names=["limits"],
          columns=[NAME(), Column("Created At", "date")],
          row=lambda o, now: [o["metadata"]["name"], o["metadata"].get("creationTimestamp", "")]),
        s("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", short_names=["quota"],
          return_deleted_object=True,
          subresources=("status",), columns=[NAME(), AGE(), C("Request"), C("Limit")], row=quota_row),
        s("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice",
          columns=[NAME(), C("AddressType"), C("Ports"), C("Endpoints"), AGE()], row=endpointslice_row),
        s("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", namespaced=False,
          short_names=["pc"],
          columns=[NAME(), C("Value", "integer"), C("Global-Default", "boolean"), AGE(), C("PreemptionPolicy")],
          row=priorityclass_row),
        s("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", short_names=["netpol"],
          generation=True, defaults=networkpolicy_defaults, validate=networkpolicy_validate,
          columns=[NAME(), C("Pod-Selector"), AGE()], row=networkpolicy_row),
        s("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", short_names=["ing"], storage="ingress",
          subresources=("status",), generation=True,
          columns=[NAME(), C("Class"), C("Hosts"), C("Address"), C("Ports"), AGE()], row=ingress_row),
        s("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", namespaced=False,
          generation=True, columns=[NAME(), C("Controller"), C("Parameters"), AGE()], row=ingressclass_row),
        s("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "", namespaced=False,
          verbs=("create",), create_handler=self_subject_review),
        s("batch", "v1", "CronJob", "cronjobs", "cronjob", short_names=["cj"], categories=["all"],
          subresources=("status",), generation=True, defaults=cronjob_defaults, prepare_create=reset_status,
          columns=[NAME(), C("Schedule"), C("Timezone"), C("Suspend"), C("Active", "integer"),
                   C("Last Schedule"), AGE(), *WORKLOAD_WIDE],
          row=cronjob_row),
    ]


def bootstrap_namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def kubernetes_service(cluster_ip: str, port: int) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip,
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    }


__all__ = ["builtin_strategies", "ClusterIPAllocator", "bootstrap_namespace", "kubernetes_service", "now_rfc3339"]
