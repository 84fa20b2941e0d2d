"""Health assessment with Argo CD's rules (gitops-engine pkg/health): Healthy, Progressing, Degraded,
Suspended, Missing for built-in workload kinds, and status.conditions Ready/Available for custom resources.
Kinds without a health notion (ConfigMap, Secret, ...) have none and do not count toward the app's health."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
HEALTHY, PROGRESSING, DEGRADED, SUSPENDED, MISSING, UNKNOWN = (
    "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
# gitops-engine's health.IsWorse order
ORDER = [HEALTHY, SUSPENDED, PROGRESSING, MISSING, DEGRADED, UNKNOWN]
Health = tuple[str, str] | None  # (status, message)


def worst(statuses: list[str]) -> str:
    return max(statuses, key=ORDER.index) if statuses else HEALTHY


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _generation_pending(obj: Obj, kind: str) -> Health:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if int(meta.get("generation") or 0) > int(status.get("observedGeneration") or 0):
        return PROGRESSING, f"Waiting for rollout to finish: observed {kind.lower()} generation less than desired"
    return None


def deployment(obj: Obj) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("paused"):
        return SUSPENDED, "Deployment is paused"
    if pending := _generation_pending(obj, "Deployment"):
        return pending
    progressing = _conditions(obj).get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return DEGRADED, f'Deployment "{obj["metadata"]["name"]}" exceeded its progress deadline'
    replicas = int(spec.get("replicas", 1))
    updated, total = int(status.get("updatedReplicas") or 0), int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < replicas:
        return PROGRESSING, (f"Waiting for rollout to finish: {updated} out of {replicas} new replicas have been "
                             "updated...")
    if total > updated:
        return PROGRESSING, (f"Waiting for rollout to finish: {total - updated} old replicas are pending "
                             "termination...")
    if available < updated:
        return PROGRESSING, (f"Waiting for rollout to finish: {available} of {updated} updated replicas are "
                             "available...")
    return HEALTHY, ""


def statefulset(obj: Obj) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if pending := _generation_pending(obj, "StatefulSet"):
        return pending
    replicas = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    if ready < replicas:
        return PROGRESSING, f"Waiting for {replicas} pods to be ready..."
    if status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
        return PROGRESSING, "waiting for statefulset rolling update to complete"
    return HEALTHY, f"statefulset rolling update complete {ready} pods at revision {status.get('currentRevision')}..."


def daemonset(obj: Obj) -> Health:
    status = obj.get("status") or {}
    if pending := _generation_pending(obj, "DaemonSet"):
        return pending
    desired = int(status.get("desiredNumberScheduled") or 0)
    if int(status.get("updatedNumberScheduled") or 0) < desired:
        return PROGRESSING, "Waiting for daemon set rollout to finish"
    if int(status.get("numberAvailable") or 0) < desired:
        return PROGRESSING, "Waiting for daemon set rollout to finish: pods are not available yet"
    return HEALTHY, ""


def replicaset(obj: Obj) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if pending := _generation_pending(obj, "ReplicaSet"):
        return pending
    failure = _conditions(obj).get("ReplicaFailure") or {}
    if failure.get("status") == "True":
        return DEGRADED, failure.get("message", "")
    if int(status.get("availableReplicas") or 0) < int(spec.get("replicas", 1)):
        return PROGRESSING, "Waiting for rollout to finish: not all replicas are available"
    return HEALTHY, ""


def pod(obj: Obj) -> Health:
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    containers = status.get("containerStatuses") or []
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return DEGRADED, waiting.get("message") or waiting["reason"]
    if phase == "Succeeded":
        return HEALTHY, status.get("message", "")
    if phase == "Failed":
        return DEGRADED, status.get("message", "") or "pod failed"
    if phase == "Running":
        if (obj.get("spec") or {}).get("restartPolicy", "Always") == "Always" and not all(
                c.get("ready") for c in containers):
            return PROGRESSING, "containers not ready"
        return HEALTHY if containers and all(c.get("ready") for c in containers) else PROGRESSING, ""
    return PROGRESSING, status.get("message", "")


def service(obj: Obj) -> Health:
    if (obj.get("spec") or {}).get("type") == "LoadBalancer":
        if not ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
            return PROGRESSING, ""
    return HEALTHY, ""


def pvc(obj: Obj) -> Health:
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Lost":
        return DEGRADED, ""
    if phase == "Bound":
        return HEALTHY, ""
    return PROGRESSING, ""


def job(obj: Obj) -> Health:
    conditions = _conditions(obj)
    for failed in ("Failed", "FailureTarget"):
        if (conditions.get(failed) or {}).get("status") == "True":
            return DEGRADED, conditions[failed].get("message", "") or "Job failed"
    if (conditions.get("Complete") or {}).get("status") == "True":
        return HEALTHY, conditions["Complete"].get("message", "")
    if (obj.get("spec") or {}).get("suspend"):
        return SUSPENDED, "Job is suspended"
    return PROGRESSING, ""


def from_conditions(obj: Obj) -> Health:
    conditions = _conditions(obj)
    for kind in ("Ready", "Available"):
        condition = conditions.get(kind)
        if condition:
            state = {"True": HEALTHY, "False": DEGRADED}.get(condition.get("status", ""), PROGRESSING)
            return state, condition.get("message", "")
    return None


BUILTIN = {("apps", "Deployment"): deployment, ("apps", "StatefulSet"): statefulset,
           ("apps", "DaemonSet"): daemonset, ("apps", "ReplicaSet"): replicaset, ("", "Pod"): pod,
           ("", "Service"): service, ("", "PersistentVolumeClaim"): pvc, ("batch", "Job"): job}


def assess(obj: Obj | None) -> Health:
    if obj is None:
        return MISSING, ""
    group = obj.get("apiVersion", "").rpartition("/")[0]
    check = BUILTIN.get((group, obj.get("kind", "")))
    if check is not None:
        return check(obj)
    if group and "." in group and not group.endswith("k8s.io"):
        return from_conditions(obj)
    return None
