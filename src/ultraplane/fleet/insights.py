"""Upgrade insights for one cluster: what would break, or be disrupted, on the way to a target release.

In the manner of EKS Cluster Insights (and kubent, pluto, kubepug, eksup), each insight has a status of
ERROR (the upgrade breaks something), WARNING (it works, but something needs attention), PASSING or
UNKNOWN (the facts could not be read, e.g. RBAC refused a list). Insights are computed per hop: a
control plane moves one minor release at a time, so 1.30 -> 1.33 is three hops, each with its blockers.

`gather` reads the facts through the cluster's API server (any Kubernetes cluster, ours or not);
`evaluate` turns facts into insights without I/O, so the rules are testable on their own.
"""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import yaml

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.fleet import apilifecycle as lifecycle
from ultraplane.fleet.apilifecycle import Minor, format_minor, parse_minor

PASSING, WARNING, ERROR, UNKNOWN = "PASSING", "WARNING", "ERROR", "UNKNOWN"
_SEVERITY = {PASSING: 0, UNKNOWN: 1, WARNING: 2, ERROR: 3}
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass(frozen=True)
class ApiUse:
    """One place that still names an apiVersion/kind: a manifest kubectl applied, a Helm release, a caller."""

    api_version: str
    kind: str
    source: str  # "last-applied-configuration", "helm-release", "api-request"
    where: str  # a resource URI, or the group/version/resource a client called
    detail: str = ""


@dataclass
class ClusterFacts:
    name: str
    version: Minor
    git_version: str
    kubelets: dict[str, str] = field(default_factory=dict)  # node name -> kubeletVersion
    pdbs: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] = field(default_factory=list)  # Deployments and StatefulSets
    api_uses: list[ApiUse] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # check -> why its facts are missing


@dataclass
class Insight:
    id: str
    name: str
    kubernetes_version: str  # the release this insight is about (a hop's target)
    status: str
    reason: str
    description: str
    recommendation: str
    category: str = "UPGRADE_READINESS"
    resources: list[dict[str, str]] = field(default_factory=list)
    deprecation_details: list[dict[str, Any]] = field(default_factory=list)
    last_refresh_time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hop:
    version: str
    insights: list[Insight]

    @property
    def status(self) -> str:
        return max((i.status for i in self.insights), key=_SEVERITY.__getitem__, default=PASSING)

    @property
    def blockers(self) -> list[Insight]:
        return [i for i in self.insights if i.status == ERROR]


@dataclass
class UpgradePlan:
    cluster: str
    current: str
    target: str
    hops: list[Hop]

    @property
    def status(self) -> str:
        return max((h.status for h in self.hops), key=_SEVERITY.__getitem__, default=PASSING)

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "currentVersion": self.current, "targetVersion": self.target,
                "status": self.status,
                "hops": [{"version": h.version, "status": h.status,
                          "blockers": [b.name for b in h.blockers],
                          "insights": [i.to_dict() for i in h.insights]} for h in self.hops]}


class InsightError(ValueError):
    """A target the plan cannot be made for (older than the cluster, or not a version)."""


# ---------------------------------------------------------------------------------------------- gather
async def gather(client: KubeClient, name: str = "cluster",
                 progress: Callable[[str], None] | None = None) -> ClusterFacts:
    """Read what the rules need. Lists that fail (RBAC, an unserved API) mark their check UNKNOWN."""
    step = progress or (lambda _what: None)
    step("version")
    info = await client.get("/version")
    facts = ClusterFacts(name, parse_minor(info.get("gitVersion", "")), info.get("gitVersion", ""))

    async def listed(check: str, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            return (await client.list(path, {"limit": 500, **(params or {})})).get("items") or []
        except ApiError as exc:
            facts.unreadable.setdefault(check, f"GET {path}: {exc.status.get('message') if exc.status else exc}")
            return []

    step("nodes")
    for node in await listed("kubelet-version-skew", "/api/v1/nodes"):
        info = (node.get("status") or {}).get("nodeInfo") or {}
        facts.kubelets[node["metadata"]["name"]] = info.get("kubeletVersion", "")
    step("pod disruption budgets")
    facts.pdbs = await listed("pdb-blocks-drain", "/apis/policy/v1/poddisruptionbudgets")
    step("workloads")
    for kind, path in (("Deployment", "/apis/apps/v1/deployments"), ("StatefulSet", "/apis/apps/v1/statefulsets")):
        facts.workloads += [{**item, "kind": kind} for item in await listed("workload-resilience", path)]
    step("applied manifests")
    for resource_path in await _listable_resources(client):
        for obj in await listed("deprecated-apis", resource_path):
            facts.api_uses.extend(_last_applied_use(obj, resource_path))
    step("helm releases")
    for secret in await listed("deprecated-apis", "/api/v1/secrets", {"labelSelector": "owner=helm"}):
        facts.api_uses.extend(_helm_release_uses(secret))
    step("deprecated API requests")
    facts.api_uses.extend(await _requested_deprecated(client))
    return facts


async def _listable_resources(client: KubeClient) -> list[str]:
    """Collection paths of every listable resource, each group at its preferred version."""
    paths: list[str] = []
    core = await client.get("/api/v1")
    paths += [f"/api/v1/{r['name']}" for r in core.get("resources") or []
              if "/" not in r["name"] and "list" in (r.get("verbs") or [])]
    groups = await client.get("/apis")
    for group in groups.get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("groupVersion")
        if not preferred:
            continue
        try:
            listing = await client.get(f"/apis/{preferred}")
        except ApiError:
            continue
        paths += [f"/apis/{preferred}/{r['name']}" for r in listing.get("resources") or []
                  if "/" not in r["name"] and "list" in (r.get("verbs") or [])]
    # reviews and tokens cannot be listed; events are noise and never applied
    return [p for p in paths if not p.endswith(("/events", "/componentstatuses"))]


def _uri(obj: dict[str, Any], collection: str) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    base, _, resource = collection.rpartition("/")
    if namespace:
        return f"{base}/namespaces/{namespace}/{resource}/{meta.get('name')}"
    return f"{collection}/{meta.get('name')}"


def _last_applied_use(obj: dict[str, Any], collection: str) -> list[ApiUse]:
    applied = ((obj.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not applied:
        return []
    try:
        manifest = orjson.loads(applied)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(manifest, dict) or not manifest.get("apiVersion"):
        return []
    return [ApiUse(manifest["apiVersion"], manifest.get("kind", ""), "last-applied-configuration",
                   _uri(obj, collection))]


def decode_helm_release(secret: dict[str, Any]) -> dict[str, Any] | None:
    """Helm 3 stores a release as base64(gzip(JSON)) inside the Secret's (itself base64) `release` key."""
    data = (secret.get("data") or {}).get("release")
    if not data or secret.get("type") != "helm.sh/release.v1":
        return None
    try:
        blob = base64.b64decode(base64.b64decode(data))
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        release = orjson.loads(blob)
    except (ValueError, OSError, orjson.JSONDecodeError):
        return None
    return release if isinstance(release, dict) else None


def _helm_release_uses(secret: dict[str, Any]) -> list[ApiUse]:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get("status") not in (None, "deployed"):
        return []  # superseded revisions are history, not what the next upgrade re-applies
    release = decode_helm_release(secret)
    if not release:
        return []
    where = f"helm release {release.get('namespace', '')}/{release.get('name', '')} v{release.get('version', '')}"
    uses = []
    try:
        documents = list(yaml.safe_load_all(release.get("manifest") or ""))
    except yaml.YAMLError:
        return []
    for doc in documents:
        if isinstance(doc, dict) and doc.get("apiVersion"):
            name = (doc.get("metadata") or {}).get("name", "")
            uses.append(ApiUse(doc["apiVersion"], doc.get("kind", ""), "helm-release", where, name))
    return uses


async def _requested_deprecated(client: KubeClient) -> list[ApiUse]:
    """kube-apiserver's `apiserver_requested_deprecated_apis` gauge: deprecated versions clients called."""
    try:
        response = await client.raw("GET", "/metrics")
    except (ConnectionError, OSError):
        return []
    if response.status != 200:
        return []
    uses = []
    for line in response.body.decode(errors="replace").splitlines():
        if not line.startswith("apiserver_requested_deprecated_apis{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.rindex("}")].split(",")
                      if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        group, version, resource = labels.get("group", ""), labels.get("version", ""), labels.get("resource", "")
        uses.append(ApiUse(lifecycle.api_version(group, version), _kind_of(group, version, resource),
                           "api-request", f"{lifecycle.api_version(group, version)}/{resource}",
                           f"removed_release={labels.get('removed_release', '')}"))
    return uses


def _kind_of(group: str, version: str, resource: str) -> str:
    """A resource name's kind, by the schemas: 'horizontalpodautoscalers' -> 'HorizontalPodAutoscaler'."""
    singular = resource[:-1] if resource.endswith("s") else resource
    for release in reversed(lifecycle.schema_releases()):
        for g, _version, kind in lifecycle.served_kinds(release):
            if g == group and kind.lower() in (singular, resource, resource[:-2]):
                return kind
    return resource


# ---------------------------------------------------------------------------------------------- rules
def plan(facts: ClusterFacts, target: str | None = None) -> UpgradePlan:
    """Insights for each hop from the cluster's release to `target` (default: the next release)."""
    wanted = parse_minor(target) if target else (facts.version[0], facts.version[1] + 1)
    if wanted[0] != facts.version[0] or wanted < facts.version:
        raise InsightError(f"target {format_minor(wanted)} is older than the cluster's "
                           f"{format_minor(facts.version)}: Kubernetes does not downgrade")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    releases = [(facts.version[0], m) for m in range(facts.version[1] + 1, wanted[1] + 1)] or [facts.version]
    hops = []
    for release in releases:
        insights = [deprecated_apis(facts, release), kubelet_skew(facts, release), pdbs_block_drain(facts, release),
                    workload_resilience(facts, release)]
        for insight in insights:
            insight.last_refresh_time = now
            if insight.id.split("@")[0] in facts.unreadable and insight.status == PASSING:
                insight.status, insight.reason = UNKNOWN, facts.unreadable[insight.id.split("@")[0]]
        hops.append(Hop(format_minor(release), insights))
    return UpgradePlan(facts.name, format_minor(facts.version), format_minor(wanted), hops)


def deprecated_apis(facts: ClusterFacts, release: Minor) -> Insight:
    version = format_minor(release)
    removed: dict[tuple[str, str], list[ApiUse]] = {}
    deprecated: dict[tuple[str, str], list[ApiUse]] = {}
    for use in facts.api_uses:
        group, api_ver = lifecycle.split_api_version(use.api_version)
        state = lifecycle.status_at(group, api_ver, use.kind, release)
        if state.state == "removed":
            removed.setdefault((use.api_version, use.kind), []).append(use)
        elif state.state == "deprecated":
            deprecated.setdefault((use.api_version, use.kind), []).append(use)
    details, resources = [], []
    for group_uses, status in ((removed, ERROR), (deprecated, WARNING)):
        for (api_ver, kind), uses in sorted(group_uses.items()):
            group, ver = lifecycle.split_api_version(api_ver)
            state = lifecycle.status_at(group, ver, kind, release)
            removal = state.removal
            details.append({
                "usage": f"{api_ver}/{kind}",
                "replacedWith": (removal.replacement if removal else state.preferred) or "",
                "stopServingVersion": format_minor(removal.removed_in) if removal else "",
                "startServingReplacementVersion": removal.replacement_since if removal else "",
                "source": removal.source if removal else "schemas",
                "clientStats": [{"source": u.source, "where": u.where, "detail": u.detail} for u in uses],
            })
            resources += [{"insightStatus": status, "kubernetesResourceUri": u.where, "source": u.source}
                          for u in uses]
    status = ERROR if removed else WARNING if deprecated else PASSING
    reason = {ERROR: f"{sum(map(len, removed.values()))} use(s) of APIs removed in {version}",
              WARNING: f"{sum(map(len, deprecated.values()))} use(s) of deprecated APIs",
              PASSING: f"no use of APIs removed or deprecated in {version} found"}[status]
    return Insight(f"deprecated-apis@{version}", f"Deprecated APIs removed in Kubernetes v{version}", version,
                   status, reason,
                   "Manifests applied with kubectl, Helm releases and API clients that still name an API "
                   f"version which Kubernetes {version} no longer serves, or has deprecated.",
                   "Move each usage to the replacement apiVersion (kubectl convert, or edit the manifest and "
                   "re-apply; helm upgrade with the chart's new templates) before upgrading.",
                   resources=resources, deprecation_details=details)


def kubelet_skew(facts: ClusterFacts, release: Minor) -> Insight:
    """Kubernetes' version skew policy: a kubelet is never newer than the API server, and at most three
    minor releases older (two, for a kubelet older than 1.25)."""
    version = format_minor(release)
    resources = []
    for node, kubelet in sorted(facts.kubelets.items()):
        try:
            minor = parse_minor(kubelet)
        except ValueError:
            resources.append({"insightStatus": UNKNOWN, "kubernetesResourceUri": f"/api/v1/nodes/{node}",
                              "detail": f"unreadable kubeletVersion {kubelet!r}"})
            continue
        oldest = release[1] - (3 if minor[1] >= 25 else 2)
        if minor[1] < oldest:
            resources.append({"insightStatus": ERROR, "kubernetesResourceUri": f"/api/v1/nodes/{node}",
                              "detail": f"kubelet {kubelet} is more than {release[1] - oldest} minor releases "
                                        f"older than a {version} control plane"})
        elif minor > release:
            resources.append({"insightStatus": ERROR, "kubernetesResourceUri": f"/api/v1/nodes/{node}",
                              "detail": f"kubelet {kubelet} is newer than the control plane"})
    status = max((r["insightStatus"] for r in resources), key=_SEVERITY.__getitem__, default=PASSING)
    bad = sum(r["insightStatus"] == ERROR for r in resources)
    reason = (f"{bad} of {len(facts.kubelets)} node(s) outside the supported skew for {version}" if bad
              else f"all {len(facts.kubelets)} kubelet(s) within the supported skew for {version}")
    return Insight(f"kubelet-version-skew@{version}", "Kubelet version skew", version, status, reason,
                   "Checks each node's kubelet against the version skew policy for the upgraded control "
                   "plane: never newer, at most three minor releases older.",
                   f"Upgrade or replace the listed nodes so their kubelet is at least "
                   f"v1.{release[1] - 3} before moving the control plane to {version}.", resources=resources)


def pdbs_block_drain(facts: ClusterFacts, release: Minor) -> Insight:
    version = format_minor(release)
    resources = []
    for pdb in facts.pdbs:
        status = pdb.get("status") or {}
        if status.get("expectedPods", 0) > 0 and status.get("disruptionsAllowed", 0) == 0:
            meta = pdb["metadata"]
            resources.append({"insightStatus": WARNING,
                              "kubernetesResourceUri": f"/apis/policy/v1/namespaces/{meta['namespace']}/"
                                                       f"poddisruptionbudgets/{meta['name']}",
                              "detail": f"allows 0 disruptions ({status.get('currentHealthy', 0)} healthy, "
                                        f"{status.get('desiredHealthy', 0)} required)"})
    return Insight(f"pdb-blocks-drain@{version}", "PodDisruptionBudgets that block a node drain", version,
                   WARNING if resources else PASSING,
                   f"{len(resources)} PodDisruptionBudget(s) allow no disruption" if resources
                   else "every PodDisruptionBudget allows at least one disruption",
                   "A node upgrade drains each node through the eviction API; a budget that allows no "
                   "disruption stops the drain until it times out.",
                   "Scale the protected workload up, or relax minAvailable/maxUnavailable, before the node "
                   "upgrade.", resources=resources)


def workload_resilience(facts: ClusterFacts, release: Minor) -> Insight:
    version = format_minor(release)
    resources = []
    for workload in facts.workloads:
        meta, spec = workload["metadata"], workload.get("spec") or {}
        if meta.get("namespace") == "kube-system":
            continue
        pod = (spec.get("template") or {}).get("spec") or {}
        replicas = spec.get("replicas", 1)
        gaps = []
        if replicas == 1:
            gaps.append("a single replica: unavailable while its node drains")
        if not any(c.get("readinessProbe") for c in pod.get("containers") or []):
            gaps.append("no readinessProbe: replacements take traffic before they are ready")
        if replicas > 1 and not pod.get("topologySpreadConstraints") and \
                not ((pod.get("affinity") or {}).get("podAntiAffinity")):
            gaps.append("no topologySpreadConstraints or podAntiAffinity: replicas may share a node")
        if not spec.get("minReadySeconds"):
            gaps.append("minReadySeconds is 0: a rollout does not wait for replicas to stay ready")
        if gaps:
            resource = "statefulsets" if workload.get("kind") == "StatefulSet" else "deployments"
            resources.append({"insightStatus": WARNING,
                              "kubernetesResourceUri": f"/apis/apps/v1/namespaces/{meta['namespace']}/"
                                                       f"{resource}/{meta['name']}",
                              "detail": "; ".join(gaps)})
    return Insight(f"workload-resilience@{version}", "Workloads an upgrade would disrupt", version,
                   WARNING if resources else PASSING,
                   f"{len(resources)} workload(s) would lose capacity or serve unready pods during node "
                   "replacement" if resources else "every workload tolerates a rolling node replacement",
                   "Looks for Deployments and StatefulSets without readiness probes, with one replica, "
                   "without spread across nodes, or without minReadySeconds.",
                   "Add readiness probes, run at least two replicas spread across nodes or zones, and set "
                   "minReadySeconds before upgrading nodes.", resources=resources)
