"""ApplicationSets: list, clusters and git (directories, files) generators; each parameter set renders the
template (fasttemplate `{{param}}` substitution, Argo's default) into an Application owned by the set. Apps
no longer generated are deleted (Argo's default `sync` policy)."""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import logging
import posixpath
import re
from typing import Any

import yaml

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.gitops.git import GitError, RepoCache

log = logging.getLogger("ultraplane.gitops.appset")
Obj = dict[str, Any]
API = "/apis/argoproj.io/v1alpha1"
PARAM_RE = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested file content as Argo's flat parameters ("cluster.address")."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value if isinstance(value, str) else json.dumps(value)}


def path_params(path: str) -> dict[str, str]:
    base = posixpath.basename(path)
    params = {"path": path, "path.basename": base,
              "path.basenameNormalized": re.sub(r"[^a-zA-Z0-9-]", "-", base).lower()}
    for i, part in enumerate(path.split("/")):
        params[f"path[{i}]"] = part
    return params


def substitute(node: Any, params: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: substitute(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, params) for v in node]
    if isinstance(node, str):
        return PARAM_RE.sub(lambda m: str(params.get(m.group(1), m.group(0))), node)
    return node


class AppSetController:
    def __init__(self, client: KubeClient, namespace: str, repos: RepoCache, resync: float) -> None:
        self.client = client
        self.namespace = namespace
        self.repos = repos
        self.resync = resync

    async def run(self) -> None:
        while True:
            try:
                listed = await self.client.list(f"{API}/namespaces/{self.namespace}/applicationsets")
                for appset in listed.get("items") or []:
                    await self.reconcile(appset)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling applicationsets")
            await asyncio.sleep(self.resync)

    async def generate(self, generator: Obj) -> list[dict[str, str]]:
        if "list" in generator:
            return [flatten(e) for e in generator["list"].get("elements") or []]
        if "clusters" in generator:
            selector = ((generator["clusters"] or {}).get("selector") or {}).get("matchLabels") or {}
            listed = await self.client.list(f"/api/v1/namespaces/{self.namespace}/secrets",
                                            {"labelSelector": "argocd.argoproj.io/secret-type=cluster"})
            out = []
            if not selector:
                out.append({"name": "in-cluster", "server": "https://kubernetes.default.svc"})
            for secret in listed.get("items") or []:
                labels = secret["metadata"].get("labels") or {}
                if any(labels.get(k) != v for k, v in selector.items()):
                    continue
                data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
                params = {"name": data.get("name", ""), "nameNormalized": data.get("name", "").lower(),
                          "server": data.get("server", "")}
                params.update({f"metadata.labels.{k}": v for k, v in labels.items()})
                out.append(params)
            return out
        if "git" in generator:
            git = generator["git"]
            sha = await self.repos.resolve(git["repoURL"], git.get("revision") or "HEAD")
            paths = await self.repos.list_paths(git["repoURL"], sha)
            out = []
            if git.get("directories"):
                dirs = sorted({posixpath.dirname(p) for p in paths} - {""})
                dirs = sorted({"/".join(d.split("/")[:i]) for d in dirs for i in range(1, d.count("/") + 2)})
                for d in dirs:
                    included = any(fnmatch.fnmatchcase(d, e["path"]) for e in git["directories"]
                                   if not e.get("exclude"))
                    excluded = any(fnmatch.fnmatchcase(d, e["path"]) for e in git["directories"] if e.get("exclude"))
                    if included and not excluded:
                        out.append(path_params(d))
            for entry in git.get("files") or []:
                for p in paths:
                    if fnmatch.fnmatchcase(p, entry["path"]):
                        content = yaml.safe_load(await self.repos.show(git["repoURL"], sha, p)) or {}
                        for item in content if isinstance(content, list) else [content]:
                            out.append({**flatten(item), **path_params(posixpath.dirname(p))})
            return out
        raise ValueError(f"unsupported generator: {sorted(generator)}")

    async def reconcile(self, appset: Obj) -> None:
        meta, spec = appset["metadata"], appset.get("spec") or {}
        path = f"{API}/namespaces/{self.namespace}/applicationsets/{meta['name']}"
        try:
            params_list = []
            for generator in spec.get("generators") or []:
                params_list += await self.generate(generator)
        except (GitError, ValueError, ApiError, yaml.YAMLError) as exc:
            condition = {"type": "ErrorOccurred", "status": "True", "reason": "ApplicationGenerationFromParamsError",
                         "message": str(exc)}
            await self.client.patch(path, {"status": {"conditions": [condition]}},
                                    content_type="application/merge-patch+json")
            return
        wanted: dict[str, Obj] = {}
        for params in params_list:
            template = substitute(spec.get("template") or {}, params)
            name = template.get("metadata", {}).get("name", "")
            app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                   "metadata": {**template.get("metadata", {}), "namespace": self.namespace,
                                "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
                                                     "name": meta["name"], "uid": meta["uid"], "controller": True,
                                                     "blockOwnerDeletion": True}]},
                   "spec": template.get("spec") or {}}
            wanted[name] = app
        apps_path = f"{API}/namespaces/{self.namespace}/applications"
        for name, app in wanted.items():
            await self.client.apply(f"{apps_path}/{name}", app, "applicationset-controller", force=True)
        for existing in (await self.client.list(apps_path)).get("items") or []:
            owners = existing["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == meta["uid"] for o in owners) and existing["metadata"]["name"] not in wanted:
                await self.client.delete(f"{apps_path}/{existing['metadata']['name']}")
        status = {"conditions": [{"type": "ResourcesUpToDate", "status": "True", "reason": "ApplicationSetUpToDate",
                                  "message": "All applications have been generated successfully"}],
                  "resources": [{"name": n, "namespace": self.namespace, "kind": "Application",
                                 "group": "argoproj.io", "version": "v1alpha1"} for n in sorted(wanted)]}
        if (appset.get("status") or {}).get("resources") != status["resources"] or (
                appset.get("status") or {}).get("conditions", [{}])[0].get("type") != "ResourcesUpToDate":
            await self.client.patch(path, {"status": status}, content_type="application/merge-patch+json")
