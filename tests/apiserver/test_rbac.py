"""RBAC authorization: bootstrap policy, aggregation, access reviews, kube's 403s, escalation prevention.

Users are real: client certificates issued from the cluster's CA (CN = user, O = groups), driven
through kubectl and the official Python client, against ``ultraplane up`` (in-process store) and
``ultraplane apiserver`` over real etcd.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster, start_cluster
from tests.harness import child_env
from ultraplane import pki
from ultraplane.apiserver import rbac

NS = "rbac-test"


# ============================================================================ helpers
def user_kubeconfig(cluster: Cluster, user: str, groups: list[str] | None = None) -> Path:
    """A kubeconfig for ``user`` (in ``groups``) with a client certificate from the cluster's CA."""
    ca = pki.CertPair(cluster.pki / "ca.crt", cluster.pki / "ca.key")
    slug = user.replace(":", "-")
    pair = pki.issue(ca, cluster.work_dir, f"user-{slug}", user, client=True, organizations=groups or [])
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": user, "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}]
    admin["contexts"] = [{"name": user, "context": {"cluster": admin["clusters"][0]["name"], "user": user}}]
    admin["current-context"] = user
    path = cluster.work_dir / f"kubeconfig-{slug}"
    path.write_text(yaml.safe_dump(admin))
    return path


class As:
    """kubectl and the Python client as one user."""

    def __init__(self, cluster: Cluster, user: str, groups: list[str] | None = None) -> None:
        self.cluster = cluster
        self.kubeconfig = user_kubeconfig(cluster, user, groups)

    def kubectl(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        proc = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(str(self.kubeconfig))


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def restart_apiserver(cluster: Cluster) -> None:
    """Stop and start the API server (with ``ultraplane up`` the whole process; over etcd only the API server)."""
    proc = cluster.procs.pop()
    proc.terminate()
    proc.wait(15)
    with open(cluster.logs[-1], "ab") as out:
        cluster.procs.append(subprocess.Popen(proc.args, env=child_env(), stdout=out, stderr=subprocess.STDOUT))
    cluster.wait_ready()


@pytest.fixture(scope="module", params=["inprocess", "etcd"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = start_cluster(request.param)
    c.ok("create", "namespace", NS)
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


# ============================================================================ pure evaluation
def test_rule_matching_like_kube() -> None:
    def attrs(**kw: object) -> rbac.Attributes:
        base = dict(user="u", groups=(), verb="get", api_group="", resource="pods")
        base.update(kw)
        return rbac.Attributes(**base)  # type: ignore[arg-type]

    pods = rbac.Rule.from_obj({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})
    assert pods.allows(attrs())
    assert not pods.allows(attrs(subresource="log"))  # a subresource needs its own entry
    assert not pods.allows(attrs(verb="list"))
    assert not pods.allows(attrs(api_group="apps"))
    scale = rbac.Rule.from_obj({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]})
    assert scale.allows(attrs(api_group="apps", resource="deployments", subresource="scale", verb="update"))
    assert not scale.allows(attrs(api_group="apps", resource="deployments"))
    named = rbac.Rule.from_obj({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                                "resourceNames": ["a"]})
    assert named.allows(attrs(resource="configmaps", name="a"))
    assert not named.allows(attrs(resource="configmaps", name="b"))
    assert not named.allows(attrs(resource="configmaps", verb="get", name=""))
    urls = rbac.Rule.from_obj({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]})
    assert urls.allows(attrs(resource_request=False, path="/apis/apps/v1"))
    assert urls.allows(attrs(resource_request=False, path="/healthz"))
    assert not urls.allows(attrs(resource_request=False, path="/healthz/etcd"))
    assert not urls.allows(attrs(resource_request=False, path="/healthz", verb="post"))


def test_index_follows_changes_and_describes_the_allowing_binding() -> None:
    authz = rbac.RbacAuthorizer()
    authz.set_role("ns", "reader", {"rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]})
    binding = {"metadata": {"name": "rb", "namespace": "ns"}, "roleRef": {"kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "robot"}]}
    authz.set_binding("ns", "rb", binding)
    sa = rbac.Attributes("system:serviceaccount:ns:robot", ("system:serviceaccounts",), "list", "", "pods",
                         namespace="ns")
    decision = authz.authorize(sa)
    assert decision == rbac.Decision(True, 'RBAC: allowed by RoleBinding "rb/ns" of Role "reader" to '
                                           'ServiceAccount "robot/ns"')
    assert not authz.authorize(rbac.Attributes(sa.user, sa.groups, "list", "", "pods", namespace="other")).allowed
    authz.set_binding("ns", "rb", None)  # the index drops the subject, and the memoized decision with it
    assert authz.authorize(sa) == rbac.Decision(False)
    assert not authz.ns_by_subject
    authz.set_cluster_binding("crb", {"metadata": {"name": "crb"}, "roleRef": {"kind": "ClusterRole", "name": "gone"},
                                      "subjects": [{"kind": "Group", "name": "devs"}]})
    denied = rbac.Attributes("x", ("devs",), "get", "", "pods", namespace="ns", name="p")
    decision = authz.authorize(denied)
    assert decision == rbac.Decision(False, 'RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found')
    assert rbac.forbidden_error(denied, decision.reason).status["message"] == (
        'pods "p" is forbidden: User "x" cannot get resource "pods" in API group "" in the namespace "ns": '
        'RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found')


def test_escalation_text_lists_the_missing_rules_compacted() -> None:
    authz = rbac.RbacAuthorizer()
    user = type("U", (), {"name": "bob", "groups": ["g1", "system:authenticated"]})()
    wanted = rbac.compile_rules([{"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods", "secrets"]},
                                 {"verbs": ["get"], "nonResourceURLs": ["/metrics"]}])
    assert authz.confirm_no_escalation(user, "ns", wanted) == (
        'user "bob" (groups=["g1" "system:authenticated"]) is attempting to grant RBAC permissions not currently '
        'held:\n{APIGroups:[""], Resources:["pods"], Verbs:["get" "delete"]}\n'
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}\n'
        '{NonResourceURLs:["/metrics"], Verbs:["get"]}')
    authz.set_cluster_role("all", {"rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
                                             {"verbs": ["get"], "nonResourceURLs": ["/*"]}]})
    authz.set_cluster_binding("b", {"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "all"},
                                    "subjects": [{"kind": "User", "name": "bob"}]})
    assert authz.confirm_no_escalation(user, "ns", wanted) is None


# ============================================================================ against the server
def test_bootstrap_policy_is_there(cluster: Cluster) -> None:
    names = cluster.ok("get", "clusterroles", "-o", "name").split()
    for name in ("cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery",
                 "system:public-info-viewer", "system:node", "system:node-proxier", "system:kube-scheduler",
                 "system:kube-controller-manager", "system:auth-delegator", "system:heapster",
                 "system:controller:node-controller", "system:controller:namespace-controller",
                 "system:controller:clusterrole-aggregation-controller"):
        assert f"clusterrole.rbac.authorization.k8s.io/{name}" in names
    table = cluster.ok("get", "clusterroles", "cluster-admin")
    assert table.split("\n")[0].split() == ["NAME", "CREATED", "AT"]
    admin = cluster.json("get", "clusterrole", "cluster-admin")
    assert admin["metadata"]["labels"] == {"kubernetes.io/bootstrapping": "rbac-defaults"}
    assert admin["metadata"]["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}
    assert admin["rules"] == [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                              {"nonResourceURLs": ["*"], "verbs": ["*"]}]
    wide = cluster.ok("get", "clusterrolebinding", "cluster-admin", "system:kube-scheduler", "-o", "wide")
    header, *rows = wide.strip().split("\n")
    assert header.split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    assert rows[0].split()[1] == "ClusterRole/cluster-admin" and rows[0].split()[-1] == "system:masters"
    assert rows[1].split()[-1] == "system:kube-scheduler"
    roles = cluster.ok("get", "roles", "-A", "-o", "custom-columns=NS:.metadata.namespace,NAME:.metadata.name",
                       "--no-headers").split("\n")
    assert [line.split() for line in roles if line.startswith(("kube-system ", "kube-public "))] == [
        ["kube-public", "system:controller:bootstrap-signer"],
        ["kube-system", "extension-apiserver-authentication-reader"],
        ["kube-system", "system::leader-locking-kube-controller-manager"],
        ["kube-system", "system::leader-locking-kube-scheduler"],
        ["kube-system", "system:controller:bootstrap-signer"],
        ["kube-system", "system:controller:cloud-provider"],
        ["kube-system", "system:controller:token-cleaner"]]
    controller = cluster.json("get", "clusterrolebinding", "system:controller:node-controller")
    assert controller["subjects"] == [{"kind": "ServiceAccount", "name": "node-controller",
                                       "namespace": "kube-system"}]


def test_aggregated_roles_fill_and_follow(cluster: Cluster) -> None:
    view = cluster.json("get", "clusterrole", "view")
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]} in view["rules"]
    edit_rules = cluster.json("get", "clusterrole", "edit")["rules"]
    admin_rules = cluster.json("get", "clusterrole", "admin")["rules"]
    assert all(r in edit_rules for r in view["rules"])  # view aggregates into edit, edit into admin
    assert all(r in admin_rules for r in edit_rules)
    extra = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
             "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}
    cluster.ok("apply", "-f", "-", input=json.dumps(extra))
    wanted = extra["rules"][0]
    eventually(lambda: wanted in cluster.json("get", "clusterrole", "admin")["rules"])
    assert wanted in cluster.json("get", "clusterrole", "view")["rules"]
    cluster.ok("delete", "clusterrole", "widgets-view")
    eventually(lambda: wanted not in cluster.json("get", "clusterrole", "view")["rules"])


def test_forbidden_bodies_are_kubes(cluster: Cluster) -> None:
    bob = As(cluster, "bob")
    code, _, err = bob.kubectl("get", "pods", "-n", "default")
    assert code == 1
    assert err.strip() == ('Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" '
                           'in API group "" in the namespace "default"')
    with bob.api() as api:
        with pytest.raises(ApiException) as denied:
            client.AppsV1Api(api).read_namespaced_deployment("web", NS)
        assert denied.value.status == 403
        assert json.loads(denied.value.body) == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments" in API '
                       f'group "apps" in the namespace "{NS}"',
            "reason": "Forbidden", "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 403}
        with pytest.raises(ApiException) as evict:
            client.CoreV1Api(api).create_namespaced_pod_eviction(
                "x", NS, client.V1Eviction(metadata=client.V1ObjectMeta(name="x", namespace=NS)))
        assert json.loads(evict.value.body)["message"] == (
            f'pods "x" is forbidden: User "bob" cannot create resource "pods/eviction" in API group "" in the '
            f'namespace "{NS}"')
        with pytest.raises(ApiException) as nodes:
            client.CoreV1Api(api).list_node()
        assert json.loads(nodes.value.body)["message"] == (
            'nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope')
    code, _, err = bob.kubectl("get", "--raw", "/metrics")
    assert code == 1
    assert err.strip() == 'Error from server (Forbidden): forbidden: User "bob" cannot get path "/metrics"'
    assert bob.kubectl("get", "--raw", "/version")[0] == 0  # system:public-info-viewer / system:discovery
    assert bob.kubectl("api-resources", "-o", "name")[0] == 0
    monitor = As(cluster, "prometheus", ["system:monitoring"])
    assert monitor.kubectl("get", "--raw", "/metrics")[0] == 0


def test_roles_bindings_and_can_i(cluster: Cluster) -> None:
    alice = As(cluster, "alice", ["qa"])
    assert alice.kubectl("auth", "can-i", "list", "pods", "-n", NS)[1].strip() == "no"
    cluster.ok("create", "role", "pod-reader", "-n", NS, "--verb=get,list,watch", "--resource=pods")
    cluster.ok("create", "rolebinding", "alice-reads", "-n", NS, "--role=pod-reader", "--user=alice")
    eventually(lambda: alice.kubectl("auth", "can-i", "list", "pods", "-n", NS)[1].strip() == "yes")
    assert alice.kubectl("get", "pods", "-n", NS)[0] == 0
    assert alice.kubectl("auth", "can-i", "list", "pods", "-n", "default")[1].strip() == "no"
    assert alice.kubectl("auth", "can-i", "delete", "pods", "-n", NS)[1].strip() == "no"
    listing = alice.kubectl("auth", "can-i", "--list", "-n", NS)[1]
    assert any(line.split()[:1] == ["pods"] and line.rstrip().endswith("[get list watch]")
               for line in listing.splitlines())
    assert any(line.split()[:1] == ["selfsubjectaccessreviews.authorization.k8s.io"] for line in listing.splitlines())
    # --as: the admin impersonates alice (and a group), kubectl asks with a SelfSubjectAccessReview
    assert cluster.ok("auth", "can-i", "list", "pods", "-n", NS, "--as", "alice").strip() == "yes"
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", NS, "--as", "carol").stdout.strip() == "no"
    cluster.ok("create", "clusterrole", "qa-config", "--verb=get", "--resource=configmaps",
               "--resource-name=settings")
    cluster.ok("create", "clusterrolebinding", "qa-config", "--clusterrole=qa-config", "--group=qa")
    eventually(lambda: alice.kubectl("auth", "can-i", "get", "configmap/settings", "-n", "default")[1].strip()
               == "yes")
    assert alice.kubectl("auth", "can-i", "get", "configmap/other", "-n", "default")[1].strip() == "no"
    assert cluster.ok("auth", "can-i", "get", "configmap/settings", "--as", "dave", "--as-group", "qa").strip() \
        == "yes"
    cluster.ok("delete", "rolebinding", "alice-reads", "-n", NS)  # revoking takes effect as well
    eventually(lambda: alice.kubectl("auth", "can-i", "list", "pods", "-n", NS)[1].strip() == "no")
    code, _, err = alice.kubectl("get", "pods", "-n", NS)
    assert code == 1 and f'cannot list resource "pods" in API group "" in the namespace "{NS}"' in err


def test_subject_access_reviews(cluster: Cluster) -> None:
    cluster.ok("create", "rolebinding", "robot-view", "-n", NS, "--clusterrole=view", f"--serviceaccount={NS}:robot")
    with config.new_client_from_config(str(cluster.kubeconfig)) as api:
        authz = client.AuthorizationV1Api(api)

        def sar(user: str, verb: str, resource: str, namespace: str = NS,
                group: str = "") -> client.V1SubjectAccessReviewStatus:
            body = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                user=user, groups=["system:serviceaccounts", "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource, namespace=namespace,
                                                                group=group)))
            return authz.create_subject_access_review(body).status

        robot = f"system:serviceaccount:{NS}:robot"
        eventually(lambda: sar(robot, "list", "pods").allowed)
        assert sar(robot, "list", "pods").reason == (
            f'RBAC: allowed by RoleBinding "robot-view/{NS}" of ClusterRole "view" to ServiceAccount "robot/{NS}"')
        assert not sar(robot, "delete", "pods").allowed
        assert not sar(robot, "list", "secrets").allowed  # view leaves secrets out
        basic = sar("nobody", "create", "selfsubjectaccessreviews", "", "authorization.k8s.io")
        assert basic.allowed and basic.reason == ('RBAC: allowed by ClusterRoleBinding "system:basic-user" of '
                                                  'ClusterRole "system:basic-user" to Group "system:authenticated"')
        local = authz.create_namespaced_local_subject_access_review(NS, client.V1LocalSubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(user=robot, resource_attributes=client.V1ResourceAttributes(
                verb="watch", resource="deployments", group="apps", namespace=NS))))
        assert local.status.allowed and local.metadata.namespace == NS
        with pytest.raises(ApiException) as empty:
            authz.create_subject_access_review(client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(user="x")))
        assert empty.value.status == 422
        assert json.loads(empty.value.body)["message"] == (
            'SubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: "null": '
            "exactly one of nonResourceAttributes or resourceAttributes must be specified")
    names = cluster.ok("api-resources", "--api-group=authorization.k8s.io", "-o", "name").split()
    assert sorted(names) == ["localsubjectaccessreviews.authorization.k8s.io",
                             "selfsubjectaccessreviews.authorization.k8s.io",
                             "selfsubjectrulesreviews.authorization.k8s.io",
                             "subjectaccessreviews.authorization.k8s.io"]


def test_escalation_prevention(cluster: Cluster) -> None:
    ns = "rbac-escalation"
    cluster.ok("create", "namespace", ns)
    # erin may manage roles and bindings in the namespace and read pods, nothing more
    # ("*" would include escalate and bind, as in kube)
    cluster.ok("create", "role", "role-manager", "-n", ns, "--verb=get,list,create,update,patch,delete",
               "--resource=roles.rbac.authorization.k8s.io,"
               "rolebindings.rbac.authorization.k8s.io")
    cluster.ok("create", "role", "pod-reader", "-n", ns, "--verb=get,list", "--resource=pods")
    cluster.ok("create", "rolebinding", "erin-manages", "-n", ns, "--role=role-manager", "--user=erin")
    cluster.ok("create", "rolebinding", "erin-reads", "-n", ns, "--role=pod-reader", "--user=erin")
    erin = As(cluster, "erin")
    eventually(lambda: erin.kubectl("auth", "can-i", "create", "roles", "-n", ns)[1].strip() == "yes")
    # a role within what erin holds is fine; one granting more is kube's 403
    code, _, err = erin.kubectl("create", "role", "small", "-n", ns, "--verb=get", "--resource=pods")
    assert code == 0, err
    code, _, err = erin.kubectl("create", "role", "big", "-n", ns, "--verb=get,delete", "--resource=pods,secrets")
    assert code == 1
    assert err.strip() == (
        'Error from server (Forbidden): roles.rbac.authorization.k8s.io "big" is forbidden: user "erin" '
        '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}\n'
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}')
    # binding: to a role erin holds, yes; to cluster-admin, no; unless erin may "bind" it
    code, _, err = erin.kubectl("create", "rolebinding", "frank-reads", "-n", ns, "--role=pod-reader", "--user=frank")
    assert code == 0, err
    code, _, err = erin.kubectl("create", "rolebinding", "frank-admin", "-n", ns, "--clusterrole=cluster-admin",
                                "--user=frank")
    assert code == 1 and 'rolebindings.rbac.authorization.k8s.io "frank-admin" is forbidden: user "erin"' in err
    code, _, err = erin.kubectl("create", "rolebinding", "frank-ghost", "-n", ns, "--role=ghost", "--user=frank")
    assert code == 1 and 'roles.rbac.authorization.k8s.io "ghost" not found' in err
    cluster.ok("create", "role", "may-bind-admin", "-n", ns, "--verb=bind", "--resource=clusterroles",
               "--resource-name=cluster-admin")
    cluster.ok("create", "rolebinding", "erin-binds", "-n", ns, "--role=may-bind-admin", "--user=erin")
    eventually(lambda: erin.kubectl("auth", "can-i", "bind", "clusterroles/cluster-admin", "-n", ns)[1].strip()
               == "yes")
    code, _, err = erin.kubectl("create", "rolebinding", "frank-admin", "-n", ns, "--clusterrole=cluster-admin",
                                "--user=frank")
    assert code == 0, err
    # escalate lets a user write rules beyond their own
    cluster.ok("create", "role", "may-escalate", "-n", ns, "--verb=escalate", "--resource=roles")
    cluster.ok("create", "rolebinding", "erin-escalates", "-n", ns, "--role=may-escalate", "--user=erin")
    eventually(lambda: erin.kubectl("create", "role", "big", "-n", ns, "--verb=get,delete",
                                    "--resource=pods,secrets")[0] == 0)
    # aggregationRule needs cluster-admin's permissions
    cluster.ok("create", "clusterrole", "cr-manager", "--verb=create,get", "--resource=clusterroles")
    cluster.ok("create", "clusterrolebinding", "erin-cr", "--clusterrole=cr-manager", "--user=erin")
    aggregating = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "sneaky"}, "aggregationRule": {"clusterRoleSelectors": [
                       {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}}]}}
    eventually(lambda: "forbidden" in erin.kubectl("create", "-f", "-", input=json.dumps(aggregating))[2])
    assert 'clusterroles.rbac.authorization.k8s.io "sneaky" is forbidden: must have cluster-admin privileges to ' \
           'use the aggregationRule' in erin.kubectl("create", "-f", "-", input=json.dumps(aggregating))[2]


def test_validation_is_kubes(cluster: Cluster) -> None:
    bad = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "bad", "namespace": NS},
           "rules": [{"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]}
    err = cluster.kubectl("create", "-f", "-", input=json.dumps(bad)).stderr
    assert err.strip() == (
        'The Role "bad" is invalid: \n* rules[0].verbs: Required value: verbs must contain at least one value\n'
        '* rules[1].nonResourceURLs: Invalid value: ["/x"]: namespaced rules cannot apply to non-resource URLs')
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "b"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"},
               "subjects": [{"kind": "ServiceAccount", "name": "s"}]}
    err = cluster.kubectl("create", "-f", "-", input=json.dumps(binding)).stderr
    assert 'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"' in err
    assert "subjects[0].namespace: Required value" in err
    cluster.ok("create", "rolebinding", "fixed", "-n", NS, "--role=pod-reader", "--user=zed")
    patched = cluster.kubectl("patch", "rolebinding", "fixed", "-n", NS, "--type=merge", "-p",
                              '{"roleRef": {"name": "other"}}')
    assert patched.returncode == 1 and "cannot change roleRef" in patched.stderr


def test_bootstrap_reconciles_on_restart(cluster: Cluster) -> None:
    """kube's bootstrap-roles hook puts missing rules back on autoupdate roles and leaves opted-out ones alone."""
    cluster.ok("patch", "clusterrole", "system:basic-user", "--type=json", "-p",
               '[{"op": "remove", "path": "/rules/1"}]')
    cluster.ok("patch", "clusterrole", "system:heapster", "--type=merge", "-p",
               '{"metadata": {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "false"}}, '
               '"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}')
    cluster.ok("delete", "clusterrolebinding", "system:discovery")
    cluster.ok("delete", "clusterrolebinding", "system:kube-dns")  # same name, another role: recreated at start
    cluster.ok("create", "clusterrolebinding", "system:kube-dns", "--clusterrole=view", "--user=dns-admin")
    restart_apiserver(cluster)
    dns = cluster.json("get", "clusterrolebinding", "system:kube-dns")
    assert dns["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kube-dns"}
    assert dns["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dns-admin"},
                               {"kind": "ServiceAccount", "name": "kube-dns", "namespace": "kube-system"}]
    basic = cluster.json("get", "clusterrole", "system:basic-user")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"],
            "verbs": ["create"]} in basic["rules"]
    assert cluster.json("get", "clusterrole", "system:heapster")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    assert cluster.json("get", "clusterrolebinding", "system:discovery")["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]
