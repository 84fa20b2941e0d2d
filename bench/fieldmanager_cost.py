"""managedFields cost per write: before (git d2366e2's registry.record_manager) vs after (fieldmanager).

Run from /work/main:  git show d2366e2:src/ultraplane/apiserver/registry.py > /tmp/old_registry.py
                      .venv/bin/python bench/fieldmanager_cost.py
CPU time (process_time), median of 5 repeats of 2,000 calls, microseconds per call.
"""
import copy
import importlib.util
import sys
import time
import timeit

spec = importlib.util.spec_from_file_location("old_registry", "/tmp/old_registry.py")
old = importlib.util.module_from_spec(spec)
sys.modules["old_registry"] = old
spec.loader.exec_module(old)

from ultraplane.apiserver import fieldmanager as fm  # noqa: E402
from ultraplane.apiserver.openapi import Schemas  # noqa: E402
from ultraplane.apiserver.resources import builtin_strategies  # noqa: E402

pods = {x.plural: x for x in builtin_strategies()}["pods"]
schema = Schemas.load().kind_schema("", "v1", "Pod")
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"generateName": "web-abc-", "namespace": "default",
                    "labels": {"app": "web", "pod-template-hash": "abc"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                         "uid": "u1", "controller": True, "blockOwnerDeletion": True}]},
       "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}
pods.defaults(pod)
created = copy.deepcopy(pod)
fm.record_update(created, None, schema, "kube-controller-manager", "v1", "", frozenset({"status"}))
created["status"] = {"phase": "Pending"}
running = copy.deepcopy(created)
running["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.5",
                     "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0,
                                            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
first_status = running["metadata"]["managedFields"]
fm.record_update(running, created, schema, "kubelet", "v1", "status", frozenset({"spec"}))
kubelet_owns = running["metadata"]["managedFields"]
later = copy.deepcopy(running)
later["status"]["conditions"][0]["status"] = "False"


def shallow_pod():
    o = dict(pod)
    o["metadata"] = dict(pod["metadata"])
    return o


cases = {
    "pod create": (lambda: old.record_manager(shallow_pod(), "kcm", "Update", "v1"),
                   lambda: fm.record_update(shallow_pod(), None, schema, "kcm", "v1", "", frozenset({"status"}))),
    "first kubelet status write": (
        lambda: (running["metadata"].__setitem__("managedFields", first_status),
                 old.record_manager(running, "kubelet", "Update", "v1", "status")),
        lambda: (running["metadata"].__setitem__("managedFields", first_status),
                 fm.record_update(running, created, schema, "kubelet", "v1", "status", frozenset({"spec"})))),
    "later kubelet status write": (
        lambda: (later["metadata"].__setitem__("managedFields", kubelet_owns),
                 old.record_manager(later, "kubelet", "Update", "v1", "status")),
        lambda: (later["metadata"].__setitem__("managedFields", kubelet_owns),
                 fm.record_update(later, running, schema, "kubelet", "v1", "status", frozenset({"spec"})))),
}
for name, (before, after) in cases.items():
    times = [sorted(timeit.Timer(fn, timer=time.process_time).repeat(number=2000, repeat=5))[2] / 2000 * 1e6
             for fn in (before, after)]
    print(f"{name}: before {times[0]:.1f} us, after {times[1]:.1f} us, ratio {times[1] / times[0]:.1f}x")
