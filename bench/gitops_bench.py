"""GitOps benchmark: N Applications (one ConfigMap each, own namespace) from one git repository on one `ultraplane
up` cluster; measures the time until all are Synced, then the time to detect and heal drift on K of them.

    .venv/bin/python bench/gitops_bench.py --apps 1000 --drift 50 --resync 5

Prints JSON. No Argo CD runs here, so there is no side-by-side anchor (see notes/gitops/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.apiserver.conftest import inprocess_cluster  # noqa: E402
from tests.harness import ultraplane_command  # noqa: E402


def make_repo(root: Path, apps: int) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    for i in range(apps):
        path = root / f"apps/a{i}"
        path.mkdir(parents=True)
        (path / "cm.yaml").write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  v: \"{i}\"\n")
    env = ["-c", "user.email=b@example.com", "-c", "user.name=bench"]
    subprocess.run(["git", *env, "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", *env, "-C", str(root), "commit", "-q", "-m", "apps"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--drift", type=int, default=20)
    parser.add_argument("--resync", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="gitops-bench-repo-"))
    make_repo(repo, args.apps)
    with inprocess_cluster("gitops-bench-") as cluster:
        cluster.spawn([*ultraplane_command(), "gitops", "--kubeconfig", str(cluster.kubeconfig), "--resync",
                       str(args.resync), "--log-level", "warn"], "gitops")
        while cluster.kubectl("get", "appproject", "default", "-n", "argocd").returncode != 0:
            time.sleep(0.5)
        docs = [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                 "metadata": {"name": f"a{i}", "namespace": "argocd"},
                 "spec": {"project": "default", "source": {"repoURL": f"file://{repo}", "path": f"apps/a{i}"},
                          "destination": {"server": "https://kubernetes.default.svc", "namespace": f"ns{i}"},
                          "syncPolicy": {"automated": {"selfHeal": True, "prune": True},
                                         "syncOptions": ["CreateNamespace=true"]}}} for i in range(args.apps)]
        start = time.monotonic()
        cluster.ok("apply", "-f", "-", input="\n".join(json.dumps({"apiVersion": "v1", "kind": "List",
                                                                    "items": docs[i:i + 200]})
                                                        for i in range(0, len(docs), 200)))

        def synced_count() -> int:
            items = cluster.json("get", "applications", "-n", "argocd")["items"]
            return sum(1 for a in items if (a.get("status") or {}).get("sync", {}).get("status") == "Synced")

        while synced_count() < args.apps:
            if time.monotonic() - start > args.timeout:
                raise SystemExit("timed out waiting for the initial sync")
            time.sleep(1)
        initial = time.monotonic() - start
        drifted = list(range(0, args.apps, max(1, args.apps // args.drift)))[:args.drift]
        # each drift is one `kubectl patch`; the heal latency of an object is from its patch returning to a
        # watch (kubectl get --watch) showing the git value again
        start = time.monotonic()
        watch = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "configmaps", "-A",
                                  "--watch-only", "-o", "jsonpath={.metadata.namespace} {.data.v}{\"\\n\"}"],
                                 stdout=subprocess.PIPE, text=True)
        seen: list[tuple[float, str]] = []  # (arrival time, line), stamped by a reader thread as lines come

        def read_watch() -> None:
            assert watch.stdout is not None
            for line in watch.stdout:
                seen.append((time.monotonic(), line))

        threading.Thread(target=read_watch, daemon=True).start()
        time.sleep(2)
        patched: dict[str, float] = {}
        for i in drifted:
            cluster.ok("patch", "configmap", "cm", "-n", f"ns{i}", "--type", "merge", "-p", '{"data":{"v":"drift"}}')
            patched[f"ns{i}"] = time.monotonic()
        tampered = time.monotonic() - start
        healed: dict[str, float] = {}
        while len(healed) < len(drifted):
            drifted_at: dict[str, float] = {}
            for at, line in list(seen):
                namespace, _, value = line.strip().partition(" ")
                if namespace not in patched or namespace in healed:
                    continue
                if value == "drift":
                    drifted_at.setdefault(namespace, at)
                elif namespace in drifted_at and value == namespace[2:]:
                    healed[namespace] = at - drifted_at[namespace]  # drift seen -> git value seen again
            if time.monotonic() - start > args.timeout:
                raise SystemExit("timed out waiting for self-heal")
            time.sleep(0.5)
        watch.terminate()
        times = sorted(healed.values())
        print(json.dumps({"apps": args.apps, "resync_s": args.resync, "initial_sync_all_s": round(initial, 1),
                          "drifted": len(drifted), "tamper_s": round(tampered, 1),
                          "heal_median_s": round(times[len(times) // 2], 1), "heal_max_s": round(times[-1], 1)}))
    shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
