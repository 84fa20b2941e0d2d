"""API discovery for clients that act on every resource (namespace deletion, garbage collection, the fleet).

kube-controller-manager reads /api and /apis and keeps, per group, the preferred version's resources;
subresources ("pods/status") are left out. A `Resource` knows how to build its collection and object
paths, so callers never assemble URLs from discovery documents themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ultraplane.client.http import KubeClient

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """kube's GroupResource.String(): "configmaps", "deployments.apps"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection(self, namespace: str = "") -> str:
        if self.namespaced and namespace:
            return f"{self.base()}/namespaces/{namespace}/{self.plural}"
        return f"{self.base()}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


def _resources(doc: Obj, group: str, version: str) -> list[Resource]:
    out = []
    for entry in doc.get("resources") or []:
        if "/" in entry.get("name", ""):
            continue  # subresources
        out.append(Resource(group, version, entry["name"], entry.get("kind", ""), bool(entry.get("namespaced")),
                            frozenset(entry.get("verbs") or [])))
    return out


async def discover(client: KubeClient) -> list[Resource]:
    """Every top-level resource at its group's preferred version."""
    found: list[Resource] = []
    core = await client.get("/api")
    for version in core.get("versions") or ["v1"]:
        found += _resources(await client.get(f"/api/{version}"), "", version)
    groups = await client.get("/apis")
    for group in groups.get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("version")
        if not preferred and group.get("versions"):
            preferred = group["versions"][0]["version"]
        if preferred:
            found += _resources(await client.get(f"/apis/{group['name']}/{preferred}"), group["name"], preferred)
    return found


def by_kind(resources: list[Resource]) -> dict[tuple[str, str], Resource]:
    """(group, kind) -> resource, for resolving ownerReferences (their apiVersion's version may differ)."""
    return {(r.group, r.kind): r for r in resources}


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]
