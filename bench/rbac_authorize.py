"""RBAC authorization cost per request, in-process (issue 4).

Builds an ``RbacAuthorizer`` shaped like a busy cluster — the bootstrap policy plus --namespaces
namespaces, each with --bindings-per-ns RoleBindings (one for the measured service account, the
rest for other users) — and times ``authorize`` for a service account's requests:

- memo hit: the same request attributes again (the common case: clients repeat their requests);
- evaluation: the decision memo emptied before every call (the first request after any RBAC change);
- denial: an evaluation that finds nothing (every applicable rule is scanned).

The anchor is ``orjson.loads`` of one 2 KB pod, work every GET of a pod already does.

    .venv/bin/python bench/rbac_authorize.py [--namespaces 2000] [--bindings-per-ns 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from ultraplane.apiserver import rbac, rbac_policy

POD = orjson.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
    "name": "web-7d4b9c-x2x9z", "namespace": "ns-1", "uid": "7f1c3a52-2b7e-4c55-9f4d-2f3f3c1f0d11",
    "labels": {"app": "web", "pod-template-hash": "7d4b9c"}, "resourceVersion": "123456",
    "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": "node-17", "containers": [
        {"name": f"c{i}", "image": "registry.example.com/web:1.2.3", "ports": [{"containerPort": 8080}],
         "env": [{"name": f"K{j}", "value": "v" * 20} for j in range(8)],
         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}} for i in range(3)]},
    "status": {"phase": "Running", "podIP": "10.0.0.17"}})


def build(namespaces: int, per_ns: int) -> rbac.RbacAuthorizer:
    authz = rbac.RbacAuthorizer()
    for role in rbac_policy.cluster_roles():
        authz.set_cluster_role(role["metadata"]["name"], role)
    view = [r for role in rbac_policy.cluster_roles() if role["metadata"]["name"] == "system:aggregate-to-view"
            for r in role["rules"]]
    authz.set_cluster_role("view", {"rules": view})
    for binding in rbac_policy.cluster_role_bindings():
        authz.set_cluster_binding(binding["metadata"]["name"], binding)
    for n in range(namespaces):
        ns = f"ns-{n}"
        authz.set_binding(ns, "app-view", {"metadata": {"name": "app-view", "namespace": ns},
                                           "roleRef": {"kind": "ClusterRole", "name": "view"},
                                           "subjects": [{"kind": "ServiceAccount", "name": "app"}]})
        for b in range(per_ns - 1):
            authz.set_binding(ns, f"user-{b}", {"metadata": {"name": f"user-{b}", "namespace": ns},
                                                "roleRef": {"kind": "ClusterRole", "name": "edit"},
                                                "subjects": [{"kind": "User", "name": f"user-{b}"}]})
    return authz


def per_call_us(fn: Callable[[], object], calls: int, rounds: int = 7) -> float:
    """Median over rounds of the mean time per call, in microseconds."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespaces", type=int, default=2000)
    parser.add_argument("--bindings-per-ns", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    authz = build(args.namespaces, args.bindings_per_ns)
    groups = ("system:serviceaccounts", "system:serviceaccounts:ns-7", "system:authenticated")
    allowed = rbac.Attributes("system:serviceaccount:ns-7:app", groups, "list", "apps", "deployments",
                              namespace="ns-7")
    denied = rbac.Attributes("system:serviceaccount:ns-7:app", groups, "delete", "", "secrets", namespace="ns-7",
                             name="db")
    assert authz.authorize(allowed).allowed and not authz.authorize(denied).allowed

    def evaluate(a: rbac.Attributes) -> Callable[[], object]:
        def call() -> object:
            authz.decisions.clear()
            return authz.authorize(a)
        return call

    anchor = per_call_us(lambda: orjson.loads(POD), args.calls)
    hit = per_call_us(lambda: authz.authorize(allowed), args.calls)
    cold = per_call_us(evaluate(allowed), args.calls)
    miss = per_call_us(evaluate(denied), args.calls)
    bindings = len(authz.bindings) + len(authz.cluster_bindings)
    print(f"{bindings} bindings, {len(authz.cluster_roles)} cluster roles; medians of 7 rounds x {args.calls} calls")
    print(f"anchor orjson.loads(2 KB pod): {anchor:.2f} us")
    for label, value in (("memo hit", hit), ("evaluation (allowed)", cold), ("evaluation (denied)", miss)):
        print(f"{label:22s} {value:6.2f} us  ({value / anchor:.2f}x anchor)")


if __name__ == "__main__":
    main()
