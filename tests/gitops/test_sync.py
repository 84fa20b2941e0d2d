"""Application sync from real git repositories: directory manifests, drift, self-heal, prune, waves, hooks."""

from __future__ import annotations

import json
import subprocess

from tests.gitops.conftest import app_status, application, configmap
from tests.harness import child_env, ultraplane_command, wait_for


def synced(cluster, name: str, revision: str | None = None, health: str = "Healthy"):  # type: ignore[no-untyped-def]
    def check() -> dict | None:
        app = app_status(cluster, name)
        status = app.get("status") or {}
        ok = ((status.get("sync") or {}).get("status") == "Synced"
              and (status.get("health") or {}).get("status") == health
              and (revision is None or status["sync"].get("revision") == revision))
        return app if ok else None
    return check


def test_automated_sync_self_heal_and_prune(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    keep = "  annotations:\n    argocd.argoproj.io/sync-options: Prune=false\n"
    sha = repo.write({"app/a.yaml": configmap("alpha", "1"), "app/keep.yaml": configmap("keep", "k", keep),
                      "app/nested/b.yaml": configmap("beta", "2"),
                      "app/svc.json": json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                                  "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}})})
    gitops_cluster.ok("apply", "-f", "-", input=application(
        "heal", repo.url, "app", "heal-ns", automated={"prune": True, "selfHeal": True},
        extra_source={"directory": {"recurse": True}}))
    app = wait_for(synced(gitops_cluster, "heal", sha), "app heal synced and healthy", timeout=40)
    cm = gitops_cluster.json("get", "configmap", "beta", "-n", "heal-ns", "--show-managed-fields")
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "heal"
    assert any(m["manager"] == "argocd-controller" for m in cm["metadata"]["managedFields"])
    assert app["status"]["history"][0]["revision"] == sha
    assert app["status"]["operationState"]["phase"] == "Succeeded"
    kinds = {(r["kind"], r["name"]): r for r in app["status"]["resources"]}
    assert kinds[("Service", "web")]["health"]["status"] == "Healthy"

    # drift on a managed field is reverted by self-heal
    gitops_cluster.ok("patch", "configmap", "alpha", "-n", "heal-ns", "--type", "merge", "-p",
                      '{"data":{"value":"tampered"}}')
    wait_for(lambda: gitops_cluster.json("get", "configmap", "alpha", "-n", "heal-ns")["data"]["value"] == "1",
             "self-heal to revert the drift", timeout=30)

    # removed from git: pruned
    # removed from git: pruned, except what says Prune=false (shown as requiring pruning)
    sha2 = repo.write({"app/nested/b.yaml": None, "app/keep.yaml": None}, "remove beta and keep")
    wait_for(lambda: gitops_cluster.kubectl("get", "configmap", "beta", "-n", "heal-ns").returncode != 0,
             "beta pruned", timeout=40)
    app = wait_for(lambda: (a := app_status(gitops_cluster, "heal")) and a["status"]["operationState"].get(
        "syncResult", {}).get("revision") == sha2 and a["status"]["operationState"]["phase"] == "Succeeded" and a,
        "sync of the new revision finished", timeout=30)
    outcome = {r["name"]: r["status"] for r in app["status"]["operationState"]["syncResult"]["resources"]}
    assert outcome["beta"] == "Pruned" and outcome["keep"] == "PruneSkipped"
    assert gitops_cluster.kubectl("get", "configmap", "keep", "-n", "heal-ns").returncode == 0
    assert [r["name"] for r in app["status"]["resources"] if r.get("requiresPruning")] == ["keep"]


def test_out_of_sync_diff_and_requires_pruning_without_automation(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    repo.write({"m/a.yaml": configmap("one", "1"), "m/b.yaml": configmap("two", "2")})
    gitops_cluster.ok("apply", "-f", "-", input=application("manual", repo.url, "m", "manual-ns"))
    wait_for(lambda: (app_status(gitops_cluster, "manual").get("status") or {}).get("sync", {}).get("status")
             == "OutOfSync", "manual app OutOfSync before its first sync", timeout=30)
    gitops_cluster.ok("create", "namespace", "manual-ns")
    gitops_cluster.ok("patch", "application", "manual", "-n", "argocd", "--type", "merge", "-p",
                      '{"operation":{"sync":{"prune":false},"initiatedBy":{"username":"test"}}}')
    wait_for(synced(gitops_cluster, "manual"), "manual sync", timeout=30)
    gitops_cluster.ok("patch", "configmap", "one", "-n", "manual-ns", "--type", "merge", "-p",
                      '{"data":{"value":"live"}}')
    repo.write({"m/b.yaml": None})

    def out_of_sync() -> dict | None:
        app = app_status(gitops_cluster, "manual")
        status = app.get("status") or {}
        diff = (app.get("metadata", {}).get("annotations") or {}).get("gitops.ultraplane.dev/diff")
        prune = [r for r in status.get("resources", []) if r.get("requiresPruning")]
        return app if status.get("sync", {}).get("status") == "OutOfSync" and diff and prune else None
    app = wait_for(out_of_sync, "OutOfSync with a diff and a resource requiring pruning", timeout=30)
    diff = json.loads(app["metadata"]["annotations"]["gitops.ultraplane.dev/diff"])
    assert diff["ConfigMap/manual-ns/one"] == [{"path": "data.value", "desired": "1", "live": "live"}]
    assert [r["name"] for r in app["status"]["resources"] if r.get("requiresPruning")] == ["two"]
    # nothing automated: the drift stays
    assert gitops_cluster.json("get", "configmap", "one", "-n", "manual-ns")["data"]["value"] == "live"
    assert gitops_cluster.kubectl("get", "configmap", "two", "-n", "manual-ns").returncode == 0


JOB = """apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  annotations:
    argocd.argoproj.io/hook: {hook}
    argocd.argoproj.io/hook-delete-policy: {policy}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "exit 0"]
"""


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["sleep", "infinity"]
"""


def test_failed_sync_is_retried_with_backoff(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    repo.write({"f/cm.yaml": configmap("x", "1").replace("name: x", "name: x\n  namespace: does-not-exist")})
    doc = json.loads(application("retry", repo.url, "f", "retry-ns", automated={}, sync_options=["Validate=true"]))
    doc["spec"]["syncPolicy"]["retry"] = {"limit": 2, "backoff": {"duration": "1s", "factor": 2}}
    gitops_cluster.ok("apply", "-f", "-", input=json.dumps(doc))
    app = wait_for(lambda: (a := app_status(gitops_cluster, "retry")) and (a.get("status") or {}).get(
        "operationState", {}).get("phase") == "Failed" and a, "retries exhausted", timeout=40)
    state = app["status"]["operationState"]
    assert state["retryCount"] == 2
    assert "does-not-exist" in state["message"]
    assert any(c["type"] == "SyncError" for c in app["status"]["conditions"])
    assert gitops_cluster.kubectl("get", "configmap", "x", "-n", "does-not-exist").returncode != 0


def test_waves_and_hooks(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    wave = "  annotations:\n    argocd.argoproj.io/sync-wave: \"{}\"\n"
    repo.write({"h/pre.yaml": JOB.format(name="pre", hook="PreSync", policy="HookSucceeded"),
                "h/post.yaml": JOB.format(name="post", hook="PostSync", policy="BeforeHookCreation"),
                "h/late.yaml": configmap("late", "x", wave.format(5)),
                "h/early.yaml": configmap("early", "x", wave.format(-1)),
                "h/deploy.yaml": DEPLOYMENT})
    gitops_cluster.ok("apply", "-f", "-", input=application("hooks", repo.url, "h", "hooks-ns",
                                                            automated={"prune": True}))
    app = wait_for(synced(gitops_cluster, "hooks"), "hooks app synced", timeout=60)
    results = app["status"]["operationState"]["syncResult"]["resources"]
    order = [r["name"] for r in results]
    assert order == ["pre", "early", "web", "late", "post"], order
    # wave 5 waited for the Deployment of wave 0 to be healthy
    deployment = gitops_cluster.json("get", "deployment", "web", "-n", "hooks-ns")
    assert deployment["status"]["availableReplicas"] == 1
    assert {r["name"]: r.get("health", {}).get("status") for r in app["status"]["resources"]}["web"] == "Healthy"
    assert {r["name"]: r.get("hookPhase") for r in results if r.get("hookType")} == {
        "pre": "Succeeded", "post": "Succeeded"}
    # HookSucceeded deleted the PreSync job; BeforeHookCreation keeps the PostSync one until the next sync
    assert gitops_cluster.kubectl("get", "job", "pre", "-n", "hooks-ns").returncode != 0
    assert gitops_cluster.json("get", "job", "post", "-n", "hooks-ns")["status"]["succeeded"] == 1
    # hooks are not tracked resources
    assert {r["name"] for r in app["status"]["resources"]} == {"early", "late", "web"}


def test_manual_sync_history_and_rollback_with_cli(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    first = repo.write({"r/cm.yaml": configmap("conf", "v1")})
    gitops_cluster.ok("apply", "-f", "-", input=application("roll", repo.url, "r", "roll-ns"))
    cli = [*ultraplane_command(), "gitops", "--kubeconfig", str(gitops_cluster.kubeconfig)]

    def run(*args: str) -> str:
        proc = subprocess.run([*cli, *args], capture_output=True, text=True, env=child_env(), timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    wait_for(lambda: app_status(gitops_cluster, "roll").get("status"), "roll compared", timeout=30)
    run("sync", "roll")
    wait_for(synced(gitops_cluster, "roll", first), "first sync", timeout=30)
    sync_op = '{"operation":{"sync":{"prune":true},"initiatedBy":{"username":"test"}}}'
    second = repo.write({"r/cm.yaml": configmap("conf", "v2")})
    wait_for(lambda: (app_status(gitops_cluster, "roll").get("status") or {}).get("sync", {}).get("revision")
             == second, "new revision seen", timeout=30)
    gitops_cluster.ok("patch", "application", "roll", "-n", "argocd", "--type", "merge", "-p", sync_op)
    app = wait_for(synced(gitops_cluster, "roll", second), "second sync", timeout=30)
    assert [(h["id"], h["revision"]) for h in app["status"]["history"]] == [(0, first), (1, second)]
    assert gitops_cluster.json("get", "configmap", "conf", "-n", "roll-ns")["data"]["value"] == "v2"
    assert "requested" in run("rollback", "roll", "0")
    wait_for(lambda: gitops_cluster.json("get", "configmap", "conf", "-n", "roll-ns")["data"]["value"] == "v1",
             "rollback to history id 0", timeout=30)
    app = wait_for(lambda: (a := app_status(gitops_cluster, "roll")) and "operation" not in a and
                   len(a["status"]["history"]) == 3 and a, "rollback recorded", timeout=30)
    assert app["status"]["history"][-1]["revision"] == first
    assert app["status"]["sync"]["status"] == "OutOfSync"  # git HEAD is still v2
