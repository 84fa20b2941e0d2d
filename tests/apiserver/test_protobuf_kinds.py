"""kubectl's typed generators that send protobuf bodies: jobs, cronjobs, quotas, priority classes, PDBs, RBAC."""

from __future__ import annotations

import pytest

from tests.apiserver.conftest import Cluster


def test_create_job_and_cronjob(cluster: Cluster) -> None:
    cluster.ok("create", "namespace", "pb-batch")
    cluster.ok("create", "job", "once", "-n", "pb-batch", "--image=busybox", "--", "echo", "hi")
    job = cluster.json("get", "job", "once", "-n", "pb-batch")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert (container["name"], container["image"], container["command"]) == ("once", "busybox", ["echo", "hi"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    cluster.ok("create", "cronjob", "tick", "-n", "pb-batch", "--image=busybox", "--schedule=*/5 * * * *",
               "--", "date")
    cj = cluster.json("get", "cronjob", "tick", "-n", "pb-batch")
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    tmpl = cj["spec"]["jobTemplate"]
    assert tmpl["metadata"]["name"] == "tick"
    assert tmpl["spec"]["template"]["spec"]["containers"][0]["command"] == ["date"]
    assert tmpl["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"

    # a Job from the CronJob's template (kubectl create job --from) is also protobuf
    cluster.ok("create", "job", "manual", "-n", "pb-batch", "--from=cronjob/tick")
    manual = cluster.json("get", "job", "manual", "-n", "pb-batch")
    assert manual["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox"
    assert manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    owner = manual["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("CronJob", "tick", True)


def test_create_quota_and_priorityclass(cluster: Cluster) -> None:
    cluster.ok("create", "namespace", "pb-quota")
    cluster.ok("create", "quota", "q", "-n", "pb-quota", "--hard=cpu=1,memory=1Gi,pods=10",
               "--scopes=BestEffort")
    quota = cluster.json("get", "quota", "q", "-n", "pb-quota")
    assert quota["spec"]["hard"] == {"cpu": "1", "memory": "1Gi", "pods": "10"}
    assert quota["spec"]["scopes"] == ["BestEffort"]

    cluster.ok("create", "priorityclass", "pb-high", "--value=1000", "--description=important",
               "--preemption-policy=Never")
    pc = cluster.json("get", "priorityclass", "pb-high")
    assert (pc["value"], pc["description"], pc["preemptionPolicy"]) == (1000, "important", "Never")
    assert "globalDefault" not in pc or pc["globalDefault"] is False


def test_create_poddisruptionbudget(cluster: Cluster) -> None:
    cluster.ok("create", "namespace", "pb-pdb")
    cluster.ok("create", "poddisruptionbudget", "by-min", "-n", "pb-pdb", "--selector=app=web",
               "--min-available=50%")
    pdb = cluster.json("get", "pdb", "by-min", "-n", "pb-pdb")
    assert pdb["spec"]["minAvailable"] == "50%"
    assert pdb["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    cluster.ok("create", "pdb", "by-max", "-n", "pb-pdb", "--selector=app=web", "--max-unavailable=1")
    assert cluster.json("get", "pdb", "by-max", "-n", "pb-pdb")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("kind", ["role", "clusterrole"])
def test_create_roles_when_rbac_is_served(cluster: Cluster, kind: str) -> None:
    resources = cluster.ok("api-resources", "--api-group=rbac.authorization.k8s.io", "-o", "name")
    if f"{kind}s.rbac.authorization.k8s.io" not in resources.split():
        # RBAC objects are another change's work; the protobuf table is exercised once they are served
        assert cluster.kubectl("create", kind, "pb-reader", "--verb=get", "--resource=pods").returncode != 0
        return
    args = ["-n", "default"] if kind == "role" else []
    cluster.ok("create", kind, "pb-reader", "--verb=get,list", "--resource=pods", *args)
    rule = cluster.json("get", kind, "pb-reader", *args)["rules"][0]
    assert rule["verbs"] == ["get", "list"] and rule["resources"] == ["pods"] and rule["apiGroups"] == [""]
    binding = "rolebinding" if kind == "role" else "clusterrolebinding"
    cluster.ok("create", binding, "pb-bind", f"--{kind}=pb-reader", "--user=alice", *args)
    bound = cluster.json("get", binding, "pb-bind", *args)
    assert bound["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind.capitalize()
                                if kind == "role" else "ClusterRole", "name": "pb-reader"}
    assert bound["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
