"""Kustomize over git://, projects, cluster Secrets, secret placeholders, ApplicationSets and bad input."""

from __future__ import annotations

import base64
import json
import subprocess

import yaml

from tests.gitops.conftest import app_status, application, configmap
from tests.harness import free_port, wait_for


def condition(cluster, name: str, kind: str) -> str:  # type: ignore[no-untyped-def]
    status = app_status(cluster, name).get("status") or {}
    return next((c["message"] for c in status.get("conditions") or [] if c["type"] == kind), "")


def test_kustomize_over_git_daemon_at_a_tag_with_secret_placeholder(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    repo.write({"base/cm.yaml": configmap("settings", "base"),
                "base/secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n"
                                    "stringData:\n  password: <secret:vault/db#password>\n",
                "base/kustomization.yaml": "resources: [cm.yaml, secret.yaml]\n",
                "overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: prod-\n"})
    repo.git("tag", "v1")
    repo.write({"base/cm.yaml": configmap("settings", "after-tag")})
    gitops_cluster.ok("create", "namespace", "vault")
    gitops_cluster.ok("create", "secret", "generic", "db", "-n", "vault", "--from-literal=password=s3cret")
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--export-all", f"--base-path={repo.root.parent}",
                               "--listen=127.0.0.1", f"--port={port}", "--reuseaddr", str(repo.root.parent)])
    try:
        url = f"git://127.0.0.1:{port}/{repo.root.name}"
        gitops_cluster.ok("apply", "-f", "-", input=application("kust", url, "overlay", "kust-ns", revision="v1",
                                                                automated={"prune": True}))
        app = wait_for(lambda: (a := app_status(gitops_cluster, "kust")) and (a.get("status") or {}).get(
            "sync", {}).get("status") == "Synced" and a, "kustomize app synced", timeout=40)
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert gitops_cluster.json("get", "configmap", "prod-settings", "-n", "kust-ns")["data"]["value"] == "base"
    secret = gitops_cluster.json("get", "secret", "prod-creds", "-n", "kust-ns")
    assert base64.b64decode(secret["data"]["password"]).decode() == "s3cret"
    assert "s3cret" not in repo.git("log", "-p", "--all")
    assert app["status"]["sourceType"] == "Kustomize"


def test_project_restrictions(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    repo.write({"p/cm.yaml": configmap("p", "1")})
    gitops_cluster.ok("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject", "metadata": {"name": "narrow", "namespace": "argocd"},
        "spec": {"sourceRepos": ["https://git.example.com/*"],
                 "destinations": [{"server": "https://kubernetes.default.svc", "namespace": "team-*"}]}}))
    gitops_cluster.ok("apply", "-f", "-", input=application("restricted", repo.url, "p", "other", project="narrow",
                                                            automated={}))
    message = wait_for(lambda: condition(gitops_cluster, "restricted", "InvalidSpecError"), "InvalidSpecError")
    assert message == f"application repo {repo.url} is not permitted in project 'narrow'"
    gitops_cluster.ok("patch", "appproject", "narrow", "-n", "argocd", "--type", "merge", "-p",
                      '{"spec":{"sourceRepos":["*"]}}')
    wait_for(lambda: "do not match" in condition(gitops_cluster, "restricted", "InvalidSpecError"), "dest check")
    assert condition(gitops_cluster, "restricted", "InvalidSpecError") == (
        "application destination server 'https://kubernetes.default.svc' and namespace 'other' do not match any "
        "of the allowed destinations in project 'narrow'")
    assert gitops_cluster.kubectl("get", "configmap", "p", "-n", "other").returncode != 0


def test_registered_cluster_destination(gitops_cluster, make_repo) -> None:
    """A cluster Secret (Argo's format) pointing at the API server's own URL: reached through its credentials."""
    from ultraplane.gitops.controller import cluster_secret_from_kubeconfig

    secret = cluster_secret_from_kubeconfig(str(gitops_cluster.kubeconfig), "member")
    gitops_cluster.ok("apply", "-f", "-", input=json.dumps(secret))
    repo = make_repo()
    repo.write({"c/cm.yaml": configmap("remote", "1")})
    gitops_cluster.ok("apply", "-f", "-", input=application("remote", repo.url, "c", "remote-ns", automated={},
                                                            server=gitops_cluster.url))
    wait_for(lambda: gitops_cluster.kubectl("get", "configmap", "remote", "-n", "remote-ns").returncode == 0,
             "app synced to the registered cluster", timeout=30)
    # the clusters generator turns the registered cluster into an Application
    appset = {"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
              "metadata": {"name": "per-cluster", "namespace": "argocd"},
              "spec": {"generators": [{"clusters": {"selector": {"matchLabels": {
                  "argocd.argoproj.io/secret-type": "cluster"}}}}],
                       "template": {"metadata": {"name": "c-{{name}}"},
                                    "spec": {"project": "default",
                                             "source": {"repoURL": repo.url, "path": "c"},
                                             "destination": {"server": "{{server}}", "namespace": "per-cluster"}}}}}
    gitops_cluster.ok("apply", "-f", "-", input=json.dumps(appset))
    generated = wait_for(lambda: app_status(gitops_cluster, "c-member"), "clusters generator output", timeout=30)
    assert generated["spec"]["destination"]["server"] == gitops_cluster.url
    assert generated["metadata"]["ownerReferences"][0]["name"] == "per-cluster"
    gitops_cluster.ok("apply", "-f", "-", input=application("nowhere", repo.url, "c", "x", automated={},
                                                            server="https://10.255.0.1:6443"))
    assert wait_for(lambda: condition(gitops_cluster, "nowhere", "InvalidSpecError"), "unknown cluster") == (
        "there are no clusters with this URL: https://10.255.0.1:6443")


def test_bad_input_conditions_and_events(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    repo.write({"good/cm.yaml": configmap("shared", "1"),
                "bad/ok.yaml": configmap("fine", "1"),
                "bad/broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: broken\n"})
    cases = {"missing-path": (repo.url, "nope", "app path does not exist"),
             "unreachable": (f"git://127.0.0.1:{free_port()}/none", ".", "Failed to load target state"),
             "invalid": (repo.url, "bad", "failed to unmarshal broken.yaml")}
    for name, (url, path, _) in cases.items():
        gitops_cluster.ok("apply", "-f", "-", input=application(name, url, path, "bad-ns", automated={}))
    for name, (_, _, expected) in cases.items():
        message = wait_for(lambda n=name: condition(gitops_cluster, n, "ComparisonError"), f"{name} error")
        assert expected in message, message
    # nothing of the invalid source was applied
    assert gitops_cluster.kubectl("get", "configmap", "fine", "-n", "bad-ns").returncode != 0
    events = gitops_cluster.json("get", "events", "-n", "argocd")["items"]
    assert any(e["involvedObject"]["name"] == "missing-path" and e["reason"] == "ComparisonError"
               and "app path does not exist" in e["message"] for e in events), gitops_cluster.log_tail()[-1500:]
    # two applications claiming one resource
    for name in ("owner-a", "owner-b"):
        gitops_cluster.ok("apply", "-f", "-", input=application(name, repo.url, "good", "shared-ns", automated={}))
    message = wait_for(lambda: condition(gitops_cluster, "owner-a", "SharedResourceWarning") or condition(
        gitops_cluster, "owner-b", "SharedResourceWarning"), "SharedResourceWarning", timeout=30)
    assert message.startswith("ConfigMap/shared is part of applications argocd/owner-")
    # the controller keeps working
    repo.write({"good/more.yaml": configmap("more", "1")})
    wait_for(lambda: gitops_cluster.kubectl("get", "configmap", "more", "-n", "shared-ns").returncode == 0,
             "controller still syncing", timeout=30)


def test_applicationset_list_and_git_generators(gitops_cluster, make_repo) -> None:
    repo = make_repo()
    repo.write({"apps/red/cm.yaml": configmap("red", "r"), "apps/blue/cm.yaml": configmap("blue", "b"),
                "config/one/config.json": json.dumps({"target": {"namespace": "gen-one"}}),
                "one/cm.yaml": configmap("from-file", "1")})
    template = {"metadata": {"name": "{{path.basename}}-dir"},
                "spec": {"project": "default",
                         "source": {"repoURL": repo.url, "targetRevision": "HEAD", "path": "{{path}}"},
                         "destination": {"server": "https://kubernetes.default.svc", "namespace": "gen-{{path.basename}}"},
                         "syncPolicy": {"automated": {}, "syncOptions": ["CreateNamespace=true"]}}}
    appset = {"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
              "metadata": {"name": "dirs", "namespace": "argocd"},
              "spec": {"generators": [{"git": {"repoURL": repo.url, "revision": "HEAD",
                                               "directories": [{"path": "apps/*"}]}}], "template": template}}
    gitops_cluster.ok("apply", "-f", "-", input=json.dumps(appset))
    files = json.loads(json.dumps(appset))
    files["metadata"]["name"] = "files"
    files["spec"]["generators"] = [{"git": {"repoURL": repo.url, "revision": "HEAD",
                                            "files": [{"path": "config/*/config.json"}]}}]
    files["spec"]["template"]["metadata"]["name"] = "file-{{path[1]}}"
    files["spec"]["template"]["spec"]["source"]["path"] = "{{path[1]}}"
    files["spec"]["template"]["spec"]["destination"]["namespace"] = "{{target.namespace}}"
    gitops_cluster.ok("apply", "-f", "-", input=json.dumps(files))
    listed = {"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
              "metadata": {"name": "listed", "namespace": "argocd"},
              "spec": {"generators": [{"list": {"elements": [{"env": "qa"}]}}],
                       "template": {**template, "metadata": {"name": "list-{{env}}"},
                                    "spec": {**template["spec"], "source": {**template["spec"]["source"],
                                                                            "path": "apps/red"},
                                             "destination": {"server": "https://kubernetes.default.svc",
                                                             "namespace": "list-{{env}}"}}}}}
    gitops_cluster.ok("apply", "-f", "-", input=json.dumps(listed))
    wait_for(lambda: gitops_cluster.kubectl("get", "configmap", "blue", "-n", "gen-blue").returncode == 0
             and gitops_cluster.kubectl("get", "configmap", "from-file", "-n", "gen-one").returncode == 0
             and gitops_cluster.kubectl("get", "configmap", "red", "-n", "list-qa").returncode == 0,
             "generated applications synced", timeout=40)
    names = {a["metadata"]["name"] for a in gitops_cluster.json("get", "applications", "-n", "argocd")["items"]}
    assert {"red-dir", "blue-dir", "file-one", "list-qa"} <= names
    repo.write({"apps/blue/cm.yaml": None})
    wait_for(lambda: gitops_cluster.kubectl("get", "application", "blue-dir", "-n", "argocd").returncode != 0,
             "application of a removed directory deleted", timeout=30)
