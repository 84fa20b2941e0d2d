"""kubectl 1.32 against the API server, on both storage backends (see conftest.py)."""

from __future__ import annotations

import json
import re
import subprocess

from tests.apiserver.conftest import Cluster

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  containers:
  - name: main
    image: {image}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: nginx:1.27
"""


def namespace(cluster: Cluster, name: str) -> str:
    assert cluster.ok("create", "namespace", name).strip() == f"namespace/{name} created"
    return name


def header(table: str) -> list[str]:
    return re.split(r"\s{2,}", table.splitlines()[0].strip())


def test_version_and_bootstrap_namespaces(cluster: Cluster) -> None:
    version = json.loads(cluster.ok("version", "-o", "json"))["serverVersion"]
    assert version["gitVersion"].startswith("v1.32.")
    assert (version["major"], version["minor"]) == ("1", "32")
    table = cluster.ok("get", "ns")
    assert header(table) == ["NAME", "STATUS", "AGE"]
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert rows[ns] == "Active"
    ns = cluster.json("get", "ns", "default")
    assert ns["spec"]["finalizers"] == ["kubernetes"]
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "default"
    svc = cluster.json("get", "svc", "kubernetes", "-n", "default")
    assert svc["spec"]["clusterIP"] == "10.96.0.1"
    endpoints = cluster.ok("get", "endpoints", "kubernetes", "-n", "default")
    assert endpoints.splitlines()[1].split()[:2] == ["kubernetes", f"127.0.0.1:{cluster.port}"]


def test_create_pod_with_kube_defaults(cluster: Cluster) -> None:
    ns = namespace(cluster, "defaults")
    out = cluster.ok("create", "-n", ns, "-f", "-", input=POD.format(name="web", image="nginx:1.27"))
    assert out.strip() == "pod/web created"
    pod = cluster.json("get", "pod", "web", "-n", ns)
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert spec["schedulerName"] == "default-scheduler"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["enableServiceLinks"] is True
    assert spec["securityContext"] == {}
    assert spec["priority"] == 0
    assert spec["serviceAccountName"] == "default"
    assert {t["key"] for t in spec["tolerations"]} == {"node.kubernetes.io/not-ready",
                                                       "node.kubernetes.io/unreachable"}
    container = spec["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    assert pod["status"]["phase"] == "Pending"
    meta = pod["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert meta["resourceVersion"].isdigit()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    managed = cluster.json("get", "pod", "web", "-n", ns, "--show-managed-fields")["metadata"]["managedFields"]
    assert managed[0]["manager"] == "kubectl-create" and managed[0]["operation"] == "Update"
    cluster.ok("create", "-n", ns, "-f", "-", input=POD.format(name="latest", image="nginx"))
    assert cluster.json("get", "pod", "latest", "-n", ns)["spec"]["containers"][0]["imagePullPolicy"] == "Always"


def test_errors_print_like_kube_apiserver(cluster: Cluster) -> None:
    ns = namespace(cluster, "errors")
    missing = cluster.kubectl("get", "pod", "nope", "-n", ns)
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'
    missing = cluster.kubectl("get", "deployment", "nope", "-n", ns)
    assert missing.stderr.strip() == 'Error from server (NotFound): deployments.apps "nope" not found'
    manifest = POD.format(name="twice", image="busybox:1.36")
    cluster.ok("create", "-n", ns, "-f", "-", input=manifest)
    again = cluster.kubectl("create", "-n", ns, "-f", "-", input=manifest)
    assert again.returncode == 1
    assert again.stderr.strip() == ('Error from server (AlreadyExists): error when creating "STDIN": '
                                    'pods "twice" already exists')
    no_ns = cluster.kubectl("create", "-n", "does-not-exist", "-f", "-", input=manifest)
    assert no_ns.stderr.strip() == ('Error from server (NotFound): error when creating "STDIN": '
                                    'namespaces "does-not-exist" not found')
    unknown = cluster.kubectl("create", "-n", ns, "-f", "-", input=POD.format(name="strict", image="busybox:1.36")
                              + "  foo: 1\n")
    assert unknown.stderr.strip() == ('Error from server (BadRequest): error when creating "STDIN": Pod in version '
                                      '"v1" cannot be handled as a Pod: strict decoding error: unknown field '
                                      '"spec.foo"')
    invalid = cluster.kubectl("create", "-n", ns, "-f", "-",
                              input=POD.format(name="Bad_Name", image="busybox").replace("{app: Bad_Name}", "{}"))
    assert invalid.returncode == 1
    assert invalid.stderr.startswith('The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
                                     'a lowercase RFC 1123 subdomain must consist of')


def test_table_columns(cluster: Cluster) -> None:
    ns = namespace(cluster, "tables")
    cluster.ok("run", "p1", "-n", ns, "--image=busybox:1.36")
    cluster.ok("create", "deployment", "d1", "-n", ns, "--image=nginx:1.27", "--replicas=2")
    pods = cluster.ok("get", "pods", "-n", ns)
    assert header(pods) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert pods.splitlines()[1].split()[:4] == ["p1", "0/1", "Pending", "0"]
    wide = cluster.ok("get", "pods", "-n", ns, "-o", "wide")
    assert header(wide) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                            "READINESS GATES"]
    deployments = cluster.ok("get", "deploy", "-n", ns)
    assert header(deployments) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert deployments.splitlines()[1].split()[:4] == ["d1", "0/2", "0", "0"]
    deployments_wide = cluster.ok("get", "deploy", "-n", ns, "-o", "wide")
    assert header(deployments_wide)[5:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert deployments_wide.splitlines()[1].split()[5:] == ["nginx", "nginx:1.27", "app=d1"]
    cluster.ok("create", "configmap", "c1", "-n", ns, "--from-literal=a=1")
    cms = cluster.ok("get", "cm", "-n", ns)
    assert header(cms) == ["NAME", "DATA", "AGE"]
    assert cms.splitlines()[1].split()[:2] == ["c1", "1"]


def test_label_and_field_selectors(cluster: Cluster) -> None:
    ns = namespace(cluster, "selectors")
    for name, env in (("a", "prod"), ("b", "dev"), ("c", "prod"), ("d", "test")):
        cluster.ok("create", "-n", ns, "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"env": env}},
            "data": {"k": name}}))

    def names(*args: str) -> list[str]:
        return cluster.ok("get", "cm", "-n", ns, "-o", "name", *args).split()

    assert names("-l", "env=prod") == ["configmap/a", "configmap/c"]
    assert names("-l", "env!=prod") == ["configmap/b", "configmap/d"]
    assert names("-l", "env in (dev,test)") == ["configmap/b", "configmap/d"]
    assert names("--field-selector", "metadata.name=c") == ["configmap/c"]
    assert names("--field-selector", "metadata.name!=c", "-l", "env") == ["configmap/a", "configmap/b",
                                                                          "configmap/d"]
    bad = cluster.kubectl("get", "cm", "-n", ns, "--field-selector", "spec.nope=1")
    assert bad.stderr.strip() == ('Error from server (BadRequest): Unable to find "/v1, Resource=configmaps" that '
                                  'match label selector "", field selector "spec.nope=1": field label not '
                                  'supported: spec.nope')


def test_patch_all_types_and_scale(cluster: Cluster) -> None:
    ns = namespace(cluster, "patching")
    cluster.ok("create", "-n", ns, "-f", "-", input=DEPLOYMENT.format(name="web", replicas=1))
    assert cluster.json("get", "deploy", "web", "-n", ns)["metadata"]["generation"] == 1
    out = cluster.ok("patch", "deploy", "web", "-n", ns, "-p",
                     '{"spec":{"template":{"spec":{"containers":[{"name":"main","image":"nginx:1.28"}]}}}}')
    assert out.strip() == "deployment.apps/web patched"
    dep = cluster.json("get", "deploy", "web", "-n", ns)
    assert [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["nginx:1.28"]
    assert dep["metadata"]["generation"] == 2
    cluster.ok("patch", "deploy", "web", "-n", ns, "--type", "merge", "-p", '{"metadata":{"labels":{"tier":"x"}}}')
    cluster.ok("patch", "deploy", "web", "-n", ns, "--type", "json",
               "-p", '[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]')
    dep = cluster.json("get", "deploy", "web", "-n", ns)
    assert dep["metadata"]["labels"] == {"tier": "x"}
    assert dep["spec"]["revisionHistoryLimit"] == 3
    assert dep["metadata"]["generation"] == 3
    assert cluster.ok("scale", "deploy", "web", "-n", ns, "--replicas=4").strip() == "deployment.apps/web scaled"
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 4
    bad = cluster.kubectl("patch", "deploy", "web", "-n", ns, "--type", "json",
                          "-p", '[{"op":"remove","path":"/spec/nothere"}]')
    assert bad.returncode == 1


def test_apply_client_side_and_server_side(cluster: Cluster) -> None:
    ns = namespace(cluster, "applying")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"}, "data": {"a": "1", "b": "2"}}
    assert cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(cm)).strip() == "configmap/conf created"
    cm["data"] = {"a": "1", "c": "3"}
    assert cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(cm)).strip() == "configmap/conf configured"
    assert cluster.json("get", "cm", "conf", "-n", ns)["data"] == {"a": "1", "c": "3"}
    ssa = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"x": "1"}}
    out = cluster.ok("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(ssa))
    assert out.strip() == "configmap/ssa serverside-applied"
    ssa["data"]["y"] = "2"
    cluster.ok("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(ssa))
    got = cluster.json("get", "cm", "ssa", "-n", ns, "--show-managed-fields")
    assert got["data"] == {"x": "1", "y": "2"}
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in got["metadata"]["managedFields"])
    ssa["data"] = {"y": "3"}  # x is no longer applied by its only owner: it goes
    cluster.ok("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(ssa))
    assert cluster.json("get", "cm", "ssa", "-n", ns)["data"] == {"y": "3"}
    # conf's data.a belongs to client-side apply: applying another value server-side conflicts
    takeover = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"}, "data": {"a": "9"}}
    conflict = cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(takeover))
    assert conflict.returncode == 1
    assert conflict.stderr.splitlines()[0] == ('error: Apply failed with 1 conflict: conflict with '
                                               '"kubectl-client-side-apply" using v1: .data.a')
    cluster.ok("apply", "--server-side", "--force-conflicts", "-n", ns, "-f", "-", input=json.dumps(takeover))
    assert cluster.json("get", "cm", "conf", "-n", ns)["data"]["a"] == "9"


def test_delete_wait_and_namespace_finalization(cluster: Cluster) -> None:
    ns = namespace(cluster, "deleting")
    cluster.ok("create", "configmap", "gone", "-n", ns)
    cluster.ok("run", "waiter", "-n", ns, "--image=busybox:1.36")
    out = cluster.ok("wait", "-n", ns, "--for=jsonpath={.status.phase}=Pending", "pod/waiter", "--timeout=30s")
    assert out.strip() == "pod/waiter condition met"
    assert cluster.ok("delete", "cm", "gone", "-n", ns).strip() == 'configmap "gone" deleted'
    assert cluster.kubectl("get", "cm", "gone", "-n", ns).stderr.strip() == \
        'Error from server (NotFound): configmaps "gone" not found'
    assert cluster.ok("delete", "ns", ns, "--timeout=60s").strip() == f'namespace "{ns}" deleted'
    assert cluster.kubectl("get", "ns", ns).stderr.strip() == f'Error from server (NotFound): namespaces "{ns}" not found'
    assert cluster.kubectl("get", "pod", "waiter", "-n", ns).returncode == 1


def test_services_get_cluster_ips(cluster: Cluster) -> None:
    ns = namespace(cluster, "services")
    ips = set()
    for name in ("one", "two"):
        cluster.ok("create", "service", "clusterip", name, "-n", ns, "--tcp=80:8080")
        svc = cluster.json("get", "svc", name, "-n", ns)
        assert svc["spec"]["type"] == "ClusterIP"
        assert svc["spec"]["clusterIPs"] == [svc["spec"]["clusterIP"]]
        assert svc["spec"]["clusterIP"].startswith("10.")
        assert svc["spec"]["ports"][0]["protocol"] == "TCP"
        ips.add(svc["spec"]["clusterIP"])
    assert len(ips) == 2 and "10.96.0.1" not in ips
    table = cluster.ok("get", "svc", "-n", ns)
    assert header(table) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table.splitlines()[1].split()[4] == "80/TCP"


def test_chunked_list(cluster: Cluster) -> None:
    ns = namespace(cluster, "chunks")
    for i in range(7):
        cluster.ok("create", "configmap", f"cm-{i}", "-n", ns)
    out = cluster.ok("get", "cm", "-n", ns, "--chunk-size=2", "-o", "name")
    assert out.split() == [f"configmap/cm-{i}" for i in range(7)]
    raw = json.loads(cluster.ok("get", "--raw", f"/api/v1/namespaces/{ns}/configmaps?limit=3"))
    assert len(raw["items"]) == 3
    assert raw["metadata"]["remainingItemCount"] == 4
    assert raw["metadata"]["continue"]


def test_discovery(cluster: Cluster) -> None:
    resources = cluster.ok("api-resources", "-o", "name").split()
    for name in ("pods", "namespaces", "deployments.apps", "jobs.batch", "cronjobs.batch", "leases.coordination.k8s.io"):
        assert name in resources
    wide = cluster.ok("api-resources", "--api-group=apps")
    line = next(line for line in wide.splitlines() if line.startswith("deployments"))
    assert line.split() == ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    assert "apps/v1" in cluster.ok("api-versions").split()


def test_forbidden_for_non_masters(cluster: Cluster, tmp_path) -> None:  # noqa: ANN001
    from ultraplane import pki

    ca = pki.CertPair(cluster.pki / "ca.crt", cluster.pki / "ca.key")
    bob = pki.issue(ca, tmp_path, "bob", "bob", client=True, organizations=["developers"])
    result = subprocess.run(
        ["kubectl", "--server", cluster.url, "--certificate-authority", str(ca.cert), "--client-certificate",
         str(bob.cert), "--client-key", str(bob.key), "get", "pods", "-n", "default"],
        capture_output=True, text=True, timeout=60)
    assert result.stderr.strip() == ('Error from server (Forbidden): pods is forbidden: User "bob" cannot list '
                                     'resource "pods" in API group "" in the namespace "default"')
    bad_token = subprocess.run(
        ["kubectl", "--server", cluster.url, "--certificate-authority", str(ca.cert), "--token", "wrong", "get", "ns"],
        capture_output=True, text=True, timeout=60)
    assert bad_token.stderr.strip() == "error: You must be logged in to the server (Unauthorized)"


def test_typed_generators_send_protobuf(cluster: Cluster) -> None:
    # kubectl's create subcommands send application/vnd.kubernetes.protobuf bodies
    assert cluster.ok("create", "namespace", "generated").strip() == "namespace/generated created"
    ns = "generated"
    assert cluster.ok("create", "configmap", "cm", "-n", ns, "--from-literal=a=b").strip() == "configmap/cm created"
    assert cluster.ok("create", "secret", "generic", "s", "-n", ns, "--from-literal=p=q").strip() == \
        "secret/s created"
    assert cluster.ok("create", "serviceaccount", "sa", "-n", ns).strip() == "serviceaccount/sa created"
    assert cluster.ok("create", "deployment", "web", "-n", ns, "--image=nginx:1.27", "--replicas=3",
                      "--port=80").strip() == "deployment.apps/web created"
    assert cluster.ok("create", "service", "clusterip", "web", "-n", ns, "--tcp=80:8080").strip() == \
        "service/web created"
    assert cluster.json("get", "cm", "cm", "-n", ns)["data"] == {"a": "b"}
    assert cluster.json("get", "secret", "s", "-n", ns)["data"] == {"p": "cQ=="}
    dep = cluster.json("get", "deploy", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert (container["name"], container["image"], container["ports"]) == (
        "nginx", "nginx:1.27", [{"containerPort": 80, "protocol": "TCP"}])
    svc = cluster.json("get", "svc", "web", "-n", ns)
    assert svc["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    assert svc["spec"]["selector"] == {"app": "web"}
    assert cluster.ok("run", "once", "-n", ns, "--image=busybox:1.36", "--restart=Never", "--labels=run=once",
                      "--", "sleep", "1").strip() == "pod/once created"
    pod = cluster.json("get", "pod", "once", "-n", ns)
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["args"] == ["sleep", "1"]
    assert pod["metadata"]["labels"] == {"run": "once"}
    again = cluster.kubectl("create", "namespace", "generated")
    assert again.stderr.strip() == 'Error from server (AlreadyExists): namespaces "generated" already exists'


def test_server_side_dry_run_stores_nothing(cluster: Cluster) -> None:
    ns = namespace(cluster, "dryrun")
    out = cluster.ok("run", "ghost", "-n", ns, "--image=busybox:1.36", "--dry-run=server", "-o", "json")
    assert json.loads(out)["spec"]["dnsPolicy"] == "ClusterFirst"
    assert cluster.kubectl("get", "pod", "ghost", "-n", ns).returncode == 1


def test_nodes_are_cluster_scoped_with_status(cluster: Cluster) -> None:
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0"},
                       "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}
    assert cluster.ok("create", "-f", "-", input=json.dumps(node)).strip() == "node/node-a created"
    table = cluster.ok("get", "nodes", "-o", "wide")
    assert header(table)[:6] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    row = next(line.split() for line in table.splitlines()[1:] if line.startswith("node-a"))
    assert row[1:3] == ["Ready", "control-plane"] and row[4:6] == ["v1.32.0", "192.0.2.10"]
    assert cluster.ok("get", "--raw", "/api/v1/nodes/node-a").count('"namespace"') == 0
    assert cluster.ok("delete", "node", "node-a").strip() == 'node "node-a" deleted'


def test_auth_can_i_and_whoami(cluster: Cluster) -> None:
    assert cluster.kubectl("auth", "can-i", "create", "pods").stdout.strip() == "yes"
    assert cluster.kubectl("auth", "can-i", "delete", "nodes", "--all-namespaces").stdout.strip() == "yes"
    whoami = cluster.ok("auth", "whoami", "-o", "json")
    info = json.loads(whoami)["status"]["userInfo"]
    assert info["username"] == "kubernetes-admin"
    assert info["groups"] == ["system:masters", "system:authenticated"]


def test_get_watch_prints_table_rows(cluster: Cluster) -> None:
    ns = namespace(cluster, "watching")
    cluster.ok("create", "configmap", "seen", "-n", ns, "--from-literal=a=1", "--from-literal=b=2")
    watcher = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "cm", "-n", ns, "-w",
                                "--output-watch-events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[list[str]] = []

    def read_line() -> None:
        assert watcher.stdout is not None
        line = watcher.stdout.readline()
        assert line, f"kubectl get -w ended early: {watcher.stderr.read() if watcher.stderr else ''}"
        lines.append(line.split())

    try:
        read_line()
        read_line()  # header and the listed object: the watch is established from here on
        cluster.ok("delete", "cm", "seen", "-n", ns)
        read_line()
    finally:
        watcher.terminate()
        watcher.wait(30)
    assert lines[0] == ["EVENT", "NAME", "DATA", "AGE"]
    assert [row[:3] for row in lines[1:]] == [["ADDED", "seen", "2"], ["DELETED", "seen", "2"]]


def test_networking_resources_are_served(cluster: Cluster) -> None:
    ns = "netpol-test"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop}
spec:
  rules:
  - host: shop.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
""")
    policy = cluster.json("get", "networkpolicy", "-n", ns, "allow-web")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert "app=api" in cluster.ok("get", "netpol", "-n", ns)
    assert "shop.example.com" in cluster.ok("get", "ingress", "-n", ns)
    bad = cluster.kubectl("apply", "-n", ns, "-f", "-", input=(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\n"
        "spec: {podSelector: {}, policyTypes: [Sideways]}\n"))
    assert bad.returncode != 0 and "Sideways" in bad.stderr
