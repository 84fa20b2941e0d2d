"""A cluster with one simulated node (so hook Jobs run), the gitops controller against it, and git repositories."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import ultraplane_command, wait_for


class Repo:
    """A real git repository in a temporary directory (branch main)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "test@example.com")
        self.git("config", "user.name", "test")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True, text=True).stdout

    def write(self, files: dict[str, str | None], message: str = "change") -> str:
        for name, text in files.items():
            path = self.root / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    @property
    def url(self) -> str:
        return f"file://{self.root}"


@pytest.fixture(scope="package")
def gitops_cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-gitops-", "--nodes", "1") as cluster:
        cluster.spawn([*ultraplane_command(), "gitops", "--kubeconfig", str(cluster.kubeconfig), "--resync", "1"],
                      "gitops")
        wait_for(lambda: cluster.kubectl("get", "appproject", "default", "-n", "argocd").returncode == 0,
                 "the gitops controller to install its CRDs", timeout=60)
        yield cluster


@pytest.fixture
def make_repo() -> Iterator[type[Repo]]:
    roots: list[Path] = []

    def factory() -> Repo:
        roots.append(Path(tempfile.mkdtemp(prefix="ultraplane-gitrepo-")))
        return Repo(roots[-1])

    yield factory  # type: ignore[misc]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def application(name: str, repo_url: str, path: str, namespace: str, *, revision: str = "HEAD",
                automated: dict | None = None, project: str = "default", sync_options: list[str] | None = None,
                server: str = "https://kubernetes.default.svc", extra_source: dict | None = None) -> str:
    policy: dict = {"syncOptions": sync_options or ["CreateNamespace=true"]}
    if automated is not None:
        policy["automated"] = automated
    return json.dumps({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                       "metadata": {"name": name, "namespace": "argocd"},
                       "spec": {"project": project,
                                "source": {"repoURL": repo_url, "targetRevision": revision, "path": path,
                                           **(extra_source or {})},
                                "destination": {"server": server, "namespace": namespace},
                                "syncPolicy": policy}})


def app_status(cluster: Cluster, name: str) -> dict:
    proc = cluster.kubectl("get", "application", name, "-n", "argocd", "-o", "json")
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def configmap(name: str, value: str, extra_meta: str = "") -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{extra_meta}"
            f"data:\n  value: \"{value}\"\n")
