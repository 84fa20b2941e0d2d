"""The API objects a kubelet writes: its Node, its Lease, and its pods' status, with the kubelet's strings."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from ultraplane.nodes.types import InstanceType

Obj = dict[str, Any]
KUBELET_VERSION = "v1.32.0"
LEASE_NAMESPACE = "kube-node-lease"
KUBELET_ADDRESS_ANNOTATION = "ultraplane.io/kubelet-address"  # where the simulated kubelet listens
SIMULATED_LABEL = "ultraplane.io/simulated"


def rfc3339(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hex(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def node_conditions(ready: bool, heartbeat: str, transition: str) -> list[Obj]:
    def cond(kind: str, status: str, reason: str, message: str) -> Obj:
        return {"type": kind, "status": status, "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition,
                "reason": reason, "message": message}

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status") if ready else
        cond("Ready", "False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false "
             "reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"),
    ]


def node_object(name: str, itype: InstanceType, zone: str, region: str, ip: str, index: int, port: int,
                kubelet_host: str, now: dt.datetime, ready: bool = True) -> Obj:
    stamp = rfc3339(now)
    instance_id = "i-0" + _hex(name, 16)
    labels = {
        "kubernetes.io/arch": itype.arch, "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
        "beta.kubernetes.io/arch": itype.arch, "beta.kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": itype.name, "beta.kubernetes.io/instance-type": itype.name,
        "topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": region,
        "failure-domain.beta.kubernetes.io/zone": zone, "failure-domain.beta.kubernetes.io/region": region,
        "topology.k8s.aws/zone-id": f"use1-az{index % 6 + 1}" if region == "us-east-1" else f"{region}-az",
        SIMULATED_LABEL: "true",
    }
    if itype.gpus:
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.product"] = itype.gpu_product
        labels["nvidia.com/gpu.count"] = str(itype.gpus)
    kernel = "6.1.115-126.197.amzn2023.x86_64" if itype.arch == "amd64" else "6.1.115-126.197.amzn2023.aarch64"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            KUBELET_ADDRESS_ANNOTATION: kubelet_host}},
        "spec": {"providerID": f"aws:///{zone}/{instance_id}"},
        "status": {
            "capacity": itype.capacity(), "allocatable": itype.allocatable(),
            "conditions": node_conditions(ready, stamp, stamp),
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name},
                          {"type": "InternalDNS", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {"machineID": _hex(name + "m", 32), "systemUUID": "ec2" + _hex(name + "s", 29),
                         "bootID": _hex(name + "b", 32), "kernelVersion": kernel,
                         "osImage": "Amazon Linux 2023.6.20241111", "containerRuntimeVersion": "containerd://1.7.23",
                         "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                         "operatingSystem": "linux", "architecture": itype.arch},
        },
    }


def lease_object(node_name: str, node_uid: str, duration: int, now: dt.datetime) -> Obj:
    meta: Obj = {"name": node_name, "namespace": LEASE_NAMESPACE}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration, "renewTime": micro_time(now)}}


# ------------------------------------------------------------------------------------------- pod status
def container_id(pod_uid: str, container: str, restart: int = 0) -> str:
    return "containerd://" + hashlib.sha256(f"{pod_uid}/{container}/{restart}".encode()).hexdigest()


def _pod_condition(kind: str, status: str, stamp: str, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": stamp}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def scheduled_condition(pod: Obj, stamp: str) -> Obj:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled":
            return cond
    return _pod_condition("PodScheduled", "True", stamp)


def _names(pod: Obj) -> list[str]:
    return [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]


def init_statuses(pod: Obj, started: str, finished: str, done: bool) -> list[Obj]:
    out = []
    uid = pod["metadata"].get("uid", "")
    for c in (pod.get("spec") or {}).get("initContainers") or []:
        state: Obj = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                     "finishedAt": finished, "containerID": container_id(uid, c["name"])}} \
            if done else {"waiting": {"reason": "PodInitializing"}}
        out.append({"name": c["name"], "state": state, "lastState": {}, "ready": done, "restartCount": 0,
                    "image": c.get("image", ""), "imageID": "", "started": False,
                    **({"containerID": container_id(uid, c["name"])} if done else {})})
    return out


def creating_status(pod: Obj, host_ip: str, start: dt.datetime) -> Obj:
    """Pending with every container waiting in ContainerCreating (the sandbox is being set up)."""
    stamp = rfc3339(start)
    names = _names(pod)
    unready = f"containers with unready status: [{' '.join(names)}]"
    has_init = bool((pod.get("spec") or {}).get("initContainers"))
    status: Obj = {
        "phase": "Pending", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "startTime": stamp,
        "conditions": [
            _pod_condition("PodReadyToStartContainers", "False", stamp),
            _pod_condition("Initialized", "False", stamp, "ContainersNotInitialized",
                           "containers with incomplete status: [" + " ".join(
                               c["name"] for c in pod["spec"].get("initContainers") or []) + "]")
            if has_init else _pod_condition("Initialized", "True", stamp),
            _pod_condition("Ready", "False", stamp, "ContainersNotReady", unready),
            _pod_condition("ContainersReady", "False", stamp, "ContainersNotReady", unready),
            scheduled_condition(pod, stamp)],
        "containerStatuses": [{"name": c.get("name", ""), "state": {"waiting": {"reason": "ContainerCreating"}},
                               "lastState": {}, "ready": False, "restartCount": 0, "image": c.get("image", ""),
                               "imageID": "", "started": False}
                              for c in pod["spec"].get("containers") or []],
    }
    if has_init:
        status["initContainerStatuses"] = init_statuses(pod, stamp, stamp, False)
    return status


def condition_patch(conditions: list[Obj]) -> list[Obj]:
    """Conditions for a strategic merge patch: absent reason/message become null, clearing old ones.

    The kubelet sends a two-way merge patch from the old status, which nulls fields that went away;
    without that, Ready=True would keep the ContainersNotReady reason of the earlier write.
    """
    return [{"reason": None, "message": None, **cond} for cond in conditions]


def node_ready_patch(now: dt.datetime, transition: str | None) -> Obj:
    """The periodic node status post: fresh heartbeats on the kubelet's conditions."""
    stamp = rfc3339(now)
    return {"status": {"conditions": node_conditions(True, stamp, transition or stamp)}}


def pod_event(pod: Obj, node: str, container: str, kind: str, reason: str, message: str, now: dt.datetime) -> Obj:
    """A core/v1 Event as the kubelet's recorder writes it (involvedObject with the container's fieldPath)."""
    meta = pod["metadata"]
    stamp = rfc3339(now)
    involved = {"kind": "Pod", "namespace": meta.get("namespace", ""), "name": meta["name"], "uid": meta.get("uid", ""),
                "apiVersion": "v1", "resourceVersion": meta.get("resourceVersion", "")}
    if container:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{int(now.timestamp() * 1e9):x}",
                         "namespace": meta.get("namespace", "")},
            "involvedObject": involved, "reason": reason, "message": message, "type": kind,
            "source": {"component": "kubelet", "host": node}, "reportingComponent": "kubelet",
            "reportingInstance": node, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
