"""kube's bootstrap RBAC policy: the default ClusterRoles, ClusterRoleBindings and kube-system Roles.

Names, labels, annotations and rules are upstream's (plugin/pkg/auth/authorizer/rbac/bootstrappolicy,
as of 1.32), limited to what this API server and its controllers use plus the well-known roles every
cluster has. Like upstream's rule builder, ``rule`` sorts verbs, groups, resources and names.
"""

from __future__ import annotations

from typing import Any

from ultraplane.apiserver.rbac import GROUP

Obj = dict[str, Any]

BOOTSTRAP_LABEL = {"kubernetes.io/bootstrapping": "rbac-defaults"}
AUTOUPDATE = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"

READ = ("get", "list", "watch")
READ_WRITE = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
WRITE = ("create", "update", "patch", "delete", "deletecollection")
CORE = ""


def rule(verbs: tuple[str, ...] | str, groups: tuple[str, ...] | str = (), resources: tuple[str, ...] | str = (),
         names: tuple[str, ...] = (), urls: tuple[str, ...] = ()) -> Obj:
    def items(v: tuple[str, ...] | str) -> list[str]:
        return sorted([v] if isinstance(v, str) else v)

    out: Obj = {"verbs": items(verbs)}
    if urls:
        out["nonResourceURLs"] = sorted(urls)
        return out
    out["apiGroups"] = items(groups)
    out["resources"] = items(resources)
    if names:
        out["resourceNames"] = sorted(names)
    return out


def events_rule() -> Obj:
    return rule(("create", "update", "patch"), (CORE, "events.k8s.io"), "events")


def cluster_role(name: str, rules: list[Obj], *, labels: dict[str, str] | None = None,
                 aggregate_from: str = "") -> Obj:
    role: Obj = {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole",
                 "metadata": {"name": name, "labels": {**BOOTSTRAP_LABEL, **(labels or {})},
                              "annotations": dict(AUTOUPDATE)}}
    if aggregate_from:
        role["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {AGGREGATE + aggregate_from: "true"}}]}
        role["rules"] = []
    else:
        role["rules"] = rules
    return role


def cluster_binding(name: str, subjects: list[Obj], role: str = "") -> Obj:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": dict(BOOTSTRAP_LABEL), "annotations": dict(AUTOUPDATE)},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role or name},
            "subjects": subjects}


def users(*names: str) -> list[Obj]:
    return [{"apiGroup": GROUP, "kind": "User", "name": n} for n in names]


def groups(*names: str) -> list[Obj]:
    return [{"apiGroup": GROUP, "kind": "Group", "name": n} for n in names]


def service_account(namespace: str, name: str) -> list[Obj]:
    return [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]


# ============================================================================ cluster roles
def _aggregate_to_view() -> list[Obj]:
    return [
        rule(READ, CORE, ("pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
                          "services", "services/status", "endpoints", "persistentvolumeclaims",
                          "persistentvolumeclaims/status", "configmaps")),
        rule(READ, CORE, ("limitranges", "resourcequotas", "bindings", "events", "pods/status",
                          "resourcequotas/status", "namespaces/status", "replicationcontrollers/status",
                          "pods/log")),
        rule(READ, CORE, "namespaces"),
        rule(READ, "discovery.k8s.io", "endpointslices"),
        rule(READ, "apps", ("controllerrevisions", "statefulsets", "statefulsets/scale", "statefulsets/status",
                            "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                            "deployments/status", "replicasets", "replicasets/scale", "replicasets/status")),
        rule(READ, "autoscaling", ("horizontalpodautoscalers", "horizontalpodautoscalers/status")),
        rule(READ, "batch", ("jobs", "cronjobs", "cronjobs/status", "jobs/status")),
        rule(READ, "extensions", ("daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                                  "deployments/status", "ingresses", "ingresses/status", "replicasets",
                                  "replicasets/scale", "replicasets/status", "replicationcontrollers/scale",
                                  "networkpolicies")),
        rule(READ, "policy", ("poddisruptionbudgets", "poddisruptionbudgets/status")),
        rule(READ, "networking.k8s.io", ("ingresses", "ingresses/status", "networkpolicies")),
    ]


def _aggregate_to_edit() -> list[Obj]:
    return [
        rule(READ, CORE, ("pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets",
                          "services/proxy")),
        rule("impersonate", CORE, "serviceaccounts"),
        rule(WRITE, CORE, ("pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward")),
        rule("create", CORE, "pods/eviction"),
        rule(WRITE, CORE, ("replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services",
                           "services/proxy", "persistentvolumeclaims", "configmaps", "secrets", "events")),
        rule("create", CORE, "serviceaccounts/token"),
        rule(WRITE, "apps", ("statefulsets", "statefulsets/scale", "daemonsets", "deployments", "deployments/scale",
                             "deployments/rollback", "replicasets", "replicasets/scale")),
        rule(WRITE, "autoscaling", "horizontalpodautoscalers"),
        rule(WRITE, "batch", ("jobs", "cronjobs")),
        rule(WRITE, "extensions", ("daemonsets", "deployments", "deployments/scale", "deployments/rollback",
                                   "ingresses", "replicasets", "replicasets/scale", "replicationcontrollers/scale",
                                   "networkpolicies")),
        rule(WRITE, "policy", "poddisruptionbudgets"),
        rule(WRITE, "networking.k8s.io", ("ingresses", "networkpolicies")),
        rule(READ_WRITE, "coordination.k8s.io", "leases"),
    ]


def _aggregate_to_admin() -> list[Obj]:
    return [rule("create", "authorization.k8s.io", "localsubjectaccessreviews"),
            rule(READ_WRITE, GROUP, ("roles", "rolebindings"))]


def _kube_scheduler() -> list[Obj]:
    return [
        events_rule(),
        rule("create", "coordination.k8s.io", "leases"),
        rule(("get", "update"), "coordination.k8s.io", "leases", names=("kube-scheduler",)),
        rule(READ, CORE, "nodes"),
        rule(("get", "list", "watch", "delete"), CORE, "pods"),
        rule("create", CORE, ("pods/binding", "bindings")),
        rule(("patch", "update"), CORE, "pods/status"),
        rule(READ, CORE, ("services", "replicationcontrollers")),
        rule(READ, ("apps", "extensions"), "replicasets"),
        rule(READ, "apps", "statefulsets"),
        rule(READ, "policy", "poddisruptionbudgets"),
        rule(READ, CORE, ("persistentvolumeclaims", "persistentvolumes")),
        rule("create", "authentication.k8s.io", "tokenreviews"),
        rule("create", "authorization.k8s.io", "subjectaccessreviews"),
        rule(READ, "storage.k8s.io", "csinodes"),
        rule(READ, CORE, "namespaces"),
        rule(READ, "storage.k8s.io", "csidrivers"),
        rule(READ, "storage.k8s.io", "csistoragecapacities"),
    ]


def _kube_controller_manager() -> list[Obj]:
    return [
        events_rule(),
        rule("create", "coordination.k8s.io", "leases"),
        rule(("get", "update"), "coordination.k8s.io", "leases", names=("kube-controller-manager",)),
        rule("create", CORE, ("secrets", "serviceaccounts")),
        rule("delete", CORE, "secrets"),
        rule("get", CORE, ("namespaces", "secrets", "serviceaccounts", "configmaps")),
        rule("update", CORE, ("secrets", "serviceaccounts")),
        rule("create", "authentication.k8s.io", "tokenreviews"),
        rule("create", "authorization.k8s.io", "subjectaccessreviews"),
        rule(("list", "watch"), "*", "*"),
        rule("create", CORE, "serviceaccounts/token"),
    ]


def _node() -> list[Obj]:
    return [
        rule("create", "authentication.k8s.io", "tokenreviews"),
        rule("create", "authorization.k8s.io", ("subjectaccessreviews", "localsubjectaccessreviews")),
        rule(READ, CORE, "services"),
        rule(("create", "get", "list", "watch"), CORE, "nodes"),
        rule(("update", "patch"), CORE, "nodes/status"),
        rule(("update", "patch"), CORE, "nodes"),
        rule(("create", "update", "patch"), CORE, "events"),
        rule(READ, CORE, "pods"),
        rule(("create", "delete"), CORE, "pods"),
        rule(("update", "patch"), CORE, "pods/status"),
        rule("create", CORE, "pods/eviction"),
        rule(READ, CORE, ("secrets", "configmaps")),
        rule("get", CORE, ("persistentvolumeclaims", "persistentvolumes")),
        rule("get", CORE, "endpoints"),
        rule(("create", "get", "list", "watch"), "certificates.k8s.io", "certificatesigningrequests"),
        rule(("get", "create", "update", "patch", "delete"), "coordination.k8s.io", "leases"),
        rule("get", "storage.k8s.io", "volumeattachments"),
        rule("create", CORE, "serviceaccounts/token"),
        rule(("get", "update", "patch"), CORE, "persistentvolumeclaims/status"),
        rule(READ, "storage.k8s.io", "csidrivers"),
        rule(("get", "create", "update", "patch", "delete"), "storage.k8s.io", "csinodes"),
        rule(READ, "node.k8s.io", "runtimeclasses"),
    ]


def _approver(signer: str) -> list[Obj]:
    return [rule("approve", "certificates.k8s.io", "signers", names=(signer,))]


def cluster_roles() -> list[Obj]:
    cr = cluster_role
    roles = [
        cr("cluster-admin", [rule("*", "*", "*"), rule("*", urls=("*",))]),
        cr("admin", [], aggregate_from="admin"),
        cr("edit", [], labels={AGGREGATE + "admin": "true"}, aggregate_from="edit"),
        cr("view", [], labels={AGGREGATE + "edit": "true"}, aggregate_from="view"),
        cr("system:aggregate-to-admin", _aggregate_to_admin(), labels={AGGREGATE + "admin": "true"}),
        cr("system:aggregate-to-edit", _aggregate_to_edit(), labels={AGGREGATE + "edit": "true"}),
        cr("system:aggregate-to-view", _aggregate_to_view(), labels={AGGREGATE + "view": "true"}),
        cr("system:discovery", [rule("get", urls=("/healthz", "/livez", "/readyz", "/version", "/version/",
                                                   "/openapi", "/openapi/*", "/api", "/api/*", "/apis",
                                                   "/apis/*"))]),
        cr("system:basic-user", [rule("create", "authorization.k8s.io",
                                      ("selfsubjectaccessreviews", "selfsubjectrulesreviews")),
                                 rule("create", "authentication.k8s.io", "selfsubjectreviews")]),
        cr("system:public-info-viewer", [rule("get", urls=("/healthz", "/livez", "/readyz", "/version",
                                                           "/version/"))]),
        cr("system:monitoring", [rule("get", urls=("/metrics", "/metrics/slis", "/livez", "/readyz", "/healthz",
                                                   "/livez/*", "/readyz/*", "/healthz/*"))]),
        cr("system:auth-delegator", [rule("create", "authentication.k8s.io", "tokenreviews"),
                                     rule("create", "authorization.k8s.io", "subjectaccessreviews")]),
        cr("system:heapster", [rule(READ, CORE, ("events", "pods", "nodes", "namespaces")),
                               rule(READ, "extensions", "deployments")]),
        cr("system:node", _node()),
        cr("system:node-problem-detector", [rule("get", CORE, "nodes"), rule("patch", CORE, "nodes/status"),
                                            events_rule()]),
        cr("system:kubelet-api-admin", [rule(READ, CORE, "nodes"), rule("proxy", CORE, "nodes"),
                                        rule("*", CORE, ("nodes/proxy", "nodes/metrics", "nodes/stats",
                                                         "nodes/log"))]),
        cr("system:node-bootstrapper", [rule(("create", "get", "list", "watch"), "certificates.k8s.io",
                                             "certificatesigningrequests")]),
        cr("system:kube-aggregator", [rule(READ, CORE, ("services", "endpoints"))]),
        cr("system:kube-controller-manager", _kube_controller_manager()),
        cr("system:kube-dns", [rule(("list", "watch"), CORE, ("endpoints", "services"))]),
        cr("system:persistent-volume-provisioner", [
            rule(("get", "list", "watch", "create", "delete"), CORE, "persistentvolumes"),
            rule(("get", "list", "watch", "update"), CORE, "persistentvolumeclaims"),
            rule(READ, "storage.k8s.io", "storageclasses"),
            rule("watch", CORE, "events"),
            events_rule()]),
        cr("system:certificates.k8s.io:certificatesigningrequests:nodeclient",
           [rule("create", "certificates.k8s.io", "certificatesigningrequests/nodeclient")]),
        cr("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
           [rule("create", "certificates.k8s.io", "certificatesigningrequests/selfnodeclient")]),
        cr("system:volume-scheduler", [rule(("get", "list", "watch", "update", "patch"), CORE, "persistentvolumes"),
                                       rule(READ, "storage.k8s.io", "storageclasses"),
                                       rule(("get", "list", "watch", "update", "patch"), CORE,
                                            "persistentvolumeclaims")]),
        cr("system:certificates.k8s.io:legacy-unknown-approver", _approver("kubernetes.io/legacy-unknown")),
        cr("system:certificates.k8s.io:kubelet-serving-approver", _approver("kubernetes.io/kubelet-serving")),
        cr("system:certificates.k8s.io:kube-apiserver-client-approver",
           _approver("kubernetes.io/kube-apiserver-client")),
        cr("system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
           _approver("kubernetes.io/kube-apiserver-client-kubelet")),
        cr("system:service-account-issuer-discovery", [rule("get", urls=("/.well-known/openid-configuration",
                                                                         "/openid/v1/jwks"))]),
        cr("system:node-proxier", [rule(("list", "watch"), CORE, ("services", "endpoints")),
                                   rule(READ, CORE, "nodes"), events_rule(),
                                   rule(("list", "watch"), "discovery.k8s.io", "endpointslices")]),
        cr("system:kube-scheduler", _kube_scheduler()),
    ]
    return roles + [cr(name, rules) for name, rules in controller_roles().items()]


# ---------------------------------------------------------------------------- controller roles
CONTROLLER_PREFIX = "system:controller:"


def controller_roles() -> dict[str, list[Obj]]:
    """system:controller:<name>, each bound to the kube-system service account <name>."""
    p = CONTROLLER_PREFIX
    return {
        p + "clusterrole-aggregation-controller": [
            rule(("escalate", "get", "list", "watch", "update", "patch"), GROUP, "clusterroles")],
        p + "cronjob-controller": [
            rule(("get", "list", "watch", "update"), "batch", "cronjobs"),
            rule(("get", "list", "watch", "create", "update", "delete", "patch"), "batch", "jobs"),
            rule("update", "batch", "cronjobs/status"), rule("update", "batch", "cronjobs/finalizers"),
            rule(("list", "delete"), CORE, "pods"), events_rule()],
        p + "daemon-set-controller": [
            rule(READ, ("extensions", "apps"), "daemonsets"),
            rule("update", ("extensions", "apps"), "daemonsets/status"),
            rule("update", ("extensions", "apps"), "daemonsets/finalizers"),
            rule(("list", "watch"), CORE, "nodes"),
            rule(("list", "watch", "create", "delete", "patch"), CORE, "pods"),
            rule("create", CORE, "pods/binding"),
            rule(("get", "list", "watch", "create", "delete", "update", "patch"), "apps", "controllerrevisions"),
            events_rule()],
        p + "deployment-controller": [
            rule(("get", "list", "watch", "update"), ("extensions", "apps"), "deployments"),
            rule("update", ("extensions", "apps"), "deployments/status"),
            rule("update", ("extensions", "apps"), "deployments/finalizers"),
            rule(("get", "list", "watch", "create", "update", "patch", "delete"), ("apps", "extensions"),
                 "replicasets"),
            rule(("get", "list", "watch", "update"), CORE, "pods"), events_rule()],
        p + "disruption-controller": [
            rule(READ, ("extensions", "apps"), "deployments"),
            rule(READ, ("apps", "extensions"), "replicasets"),
            rule(READ, CORE, "replicationcontrollers"),
            rule(READ, "policy", "poddisruptionbudgets"),
            rule(READ, "apps", "statefulsets"),
            rule("update", "policy", "poddisruptionbudgets/status"),
            rule(("patch", "update"), CORE, "pods/status"),
            rule("get", "*", "*/scale"), events_rule()],
        p + "endpoint-controller": [
            rule(READ, CORE, ("services", "pods")),
            rule(("get", "list", "create", "update", "delete"), CORE, "endpoints"),
            rule("create", CORE, "endpoints/restricted"), events_rule()],
        p + "endpointslice-controller": [
            rule(READ, CORE, ("services", "pods", "nodes")),
            rule("update", CORE, "services/finalizers"),
            rule(("get", "list", "create", "update", "delete"), "discovery.k8s.io", "endpointslices"),
            events_rule()],
        p + "generic-garbage-collector": [
            rule(("get", "list", "watch", "patch", "update", "delete"), "*", "*"), events_rule()],
        p + "job-controller": [
            rule(("get", "list", "watch", "update", "patch"), "batch", "jobs"),
            rule("update", "batch", "jobs/status"), rule("update", "batch", "jobs/finalizers"),
            rule(("list", "watch", "create", "delete", "patch"), CORE, "pods"), events_rule()],
        p + "namespace-controller": [
            rule(("get", "list", "watch", "delete"), CORE, "namespaces"),
            rule("update", CORE, ("namespaces/finalize", "namespaces/status")),
            rule(("get", "list", "delete", "deletecollection"), "*", "*")],
        p + "node-controller": [
            rule(("get", "list", "update", "delete", "patch"), CORE, "nodes"),
            rule(("patch", "update"), CORE, "nodes/status"),
            rule(("patch", "update"), CORE, "pods/status"),
            rule(("list", "get", "delete"), CORE, "pods"), events_rule()],
        p + "pod-garbage-collector": [
            rule(("list", "watch", "delete"), CORE, "pods"), rule(("get", "list"), CORE, "nodes"),
            rule("patch", CORE, "pods/status")],
        p + "replicaset-controller": [
            rule(("get", "list", "watch", "update"), ("apps", "extensions"), "replicasets"),
            rule("update", ("apps", "extensions"), "replicasets/status"),
            rule("update", ("apps", "extensions"), "replicasets/finalizers"),
            rule(("list", "watch", "patch", "create", "delete"), CORE, "pods"), events_rule()],
        p + "replication-controller": [
            rule(("get", "list", "watch", "update"), CORE, "replicationcontrollers"),
            rule("update", CORE, "replicationcontrollers/status"),
            rule("update", CORE, "replicationcontrollers/finalizers"),
            rule(("list", "watch", "patch", "create", "delete"), CORE, "pods"), events_rule()],
        p + "resourcequota-controller": [
            rule(("list", "watch"), "*", "*"), rule("update", CORE, "resourcequotas/status"), events_rule()],
        p + "service-account-controller": [rule("create", CORE, "serviceaccounts"), events_rule()],
        p + "statefulset-controller": [
            rule(("list", "watch"), CORE, "pods"),
            rule(READ, "apps", "statefulsets"),
            rule("update", "apps", "statefulsets/status"),
            rule("update", "apps", "statefulsets/finalizers"),
            rule(("get", "create", "delete", "update", "patch"), CORE, "pods"),
            rule(("get", "create", "delete", "update", "patch", "list", "watch"), "apps", "controllerrevisions"),
            rule(("get", "create"), CORE, "persistentvolumeclaims"),
            events_rule(),
            rule(("update", "delete"), CORE, "persistentvolumeclaims")],
        p + "ttl-after-finished-controller": [rule(("get", "list", "watch", "delete"), "batch", "jobs"),
                                              events_rule()],
        p + "root-ca-cert-publisher": [rule(("create", "update"), CORE, "configmaps"), events_rule()],
    }


# ============================================================================ cluster role bindings
def cluster_role_bindings() -> list[Obj]:
    cb = cluster_binding
    bindings = [
        cb("cluster-admin", groups("system:masters")),
        cb("system:monitoring", groups("system:monitoring")),
        cb("system:discovery", groups("system:authenticated")),
        cb("system:basic-user", groups("system:authenticated")),
        cb("system:public-info-viewer", groups("system:authenticated", "system:unauthenticated")),
        cb("system:node-proxier", users("system:kube-proxy")),
        cb("system:kube-controller-manager", users("system:kube-controller-manager")),
        cb("system:kube-dns", service_account("kube-system", "kube-dns")),
        cb("system:kube-scheduler", users("system:kube-scheduler")),
        cb("system:volume-scheduler", users("system:kube-scheduler")),
        cb("system:node", []),  # kept without subjects since the Node authorizer took over (kube 1.8)
        cb("system:service-account-issuer-discovery", groups("system:serviceaccounts")),
    ]
    for name in controller_roles():
        bindings.append(cb(name, service_account("kube-system", name[len(CONTROLLER_PREFIX):])))
    for b in bindings:
        if not b["subjects"]:
            del b["subjects"]
    return bindings


# ============================================================================ namespaced roles
def namespace_roles() -> list[Obj]:
    def role(namespace: str, name: str, rules: list[Obj]) -> Obj:
        return {"apiVersion": f"{GROUP}/v1", "kind": "Role",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(BOOTSTRAP_LABEL),
                             "annotations": dict(AUTOUPDATE)}, "rules": rules}

    return [
        role("kube-system", "extension-apiserver-authentication-reader",
             [rule(READ, CORE, "configmaps", names=("extension-apiserver-authentication",))]),
        role("kube-system", "system::leader-locking-kube-controller-manager",
             [rule("watch", CORE, "configmaps"),
              rule(("get", "update"), CORE, "configmaps", names=("kube-controller-manager",)),
              rule(("get", "watch", "list", "create", "update"), "coordination.k8s.io", "leases")]),
        role("kube-system", "system::leader-locking-kube-scheduler",
             [rule("watch", CORE, "configmaps"),
              rule(("get", "update"), CORE, "configmaps", names=("kube-scheduler",))]),
        role("kube-system", CONTROLLER_PREFIX + "bootstrap-signer", [rule(READ, CORE, "secrets")]),
        role("kube-system", CONTROLLER_PREFIX + "cloud-provider",
             [rule(("create", "get", "list", "watch"), CORE, "configmaps")]),
        role("kube-system", CONTROLLER_PREFIX + "token-cleaner",
             [rule(("delete", "get", "list", "watch"), CORE, "secrets"), events_rule()]),
        role("kube-public", CONTROLLER_PREFIX + "bootstrap-signer",
             [rule(READ, CORE, "configmaps"), rule("update", CORE, "configmaps", names=("cluster-info",)),
              events_rule()]),
    ]


def namespace_role_bindings() -> list[Obj]:
    def binding(namespace: str, name: str, role: str, subjects: list[Obj]) -> Obj:
        return {"apiVersion": f"{GROUP}/v1", "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(BOOTSTRAP_LABEL),
                             "annotations": dict(AUTOUPDATE)},
                "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": role}, "subjects": subjects}

    return [
        binding("kube-system", "system::extension-apiserver-authentication-reader",
                "extension-apiserver-authentication-reader",
                users("system:kube-controller-manager", "system:kube-scheduler")),
        binding("kube-system", "system::leader-locking-kube-controller-manager",
                "system::leader-locking-kube-controller-manager",
                users("system:kube-controller-manager") + service_account("kube-system", "kube-controller-manager")
                + service_account("kube-system", "leader-election-controller")),
        binding("kube-system", "system::leader-locking-kube-scheduler", "system::leader-locking-kube-scheduler",
                users("system:kube-scheduler") + service_account("kube-system", "kube-scheduler")),
        *(binding(ns, CONTROLLER_PREFIX + name, CONTROLLER_PREFIX + name, service_account("kube-system", name))
          for ns, name in (("kube-system", "bootstrap-signer"), ("kube-system", "cloud-provider"),
                           ("kube-system", "token-cleaner"), ("kube-public", "bootstrap-signer"))),
    ]
