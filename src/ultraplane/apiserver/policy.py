"""policy/v1: PodDisruptionBudgets and the pods/eviction subresource.

The allowance a PDB grants is computed as kube's disruption controller does, in-process: when a PDB
is created and whenever an eviction consults it (the result is written to its status, so
``kubectl get pdb`` shows what the last evaluation saw). An eviction of a pod covered by a PDB that
allows no disruption is kube's 429 with the DisruptionBudget cause; an allowed one records the pod
in ``status.disruptedPods``, lowers ``disruptionsAllowed`` and deletes the pod with the Eviction's
deleteOptions.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ultraplane.apiserver import errors
from ultraplane.apiserver.app import ApiServer, json_response
from ultraplane.apiserver.registry import (
    Column,
    ListOptions,
    Obj,
    Registry,
    Strategy,
    WriteOptions,
    now_rfc3339,
)
from ultraplane.apiserver.resources import AGE, NAME, age
from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.apiserver.server import Request, Response
from ultraplane.apiserver.validation import Cause, invalid

GROUP = "policy"
EVICTION_VERSIONS = ("policy/v1", "policy/v1beta1")
DISRUPTED_POD_TIMEOUT = dt.timedelta(minutes=2)  # kube's DeletionTimeout for disruptedPods entries
MAX_DISRUPTED_PODS = 2000
BUDGET_VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."
PERCENT = re.compile(r"^[0-9]+%$")


# ============================================================================ the strategy
def _int_or_percent_causes(value: Any, field: str) -> list[Cause]:
    if isinstance(value, bool):
        return [invalid(field, value, "must be an integer or percentage (e.g '5%')")]
    if isinstance(value, int):
        return [invalid(field, value, "must be greater than or equal to 0")] if value < 0 else []
    text = str(value)
    if not PERCENT.match(text):
        return [invalid(field, text, "a valid percent string must be a numeric string followed by an ending '%' "
                                     "(e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")]
    if int(text[:-1]) > 100:
        return [invalid(field, text, "must not be greater than 100%")]
    return []


def pdb_validate(obj: Obj, old: Obj | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        causes.append(invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set"))
    for name in ("minAvailable", "maxUnavailable"):
        if spec.get(name) is not None:
            causes += _int_or_percent_causes(spec[name], f"spec.{name}")
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy not in (None, "", "IfHealthyBudget", "AlwaysAllow"):
        causes.append({"reason": "FieldValueNotSupported", "field": "spec.unhealthyPodEvictionPolicy",
                       "message": f'Unsupported value: "{policy}": supported values: "AlwaysAllow", '
                                  f'"IfHealthyBudget"'})
    try:
        label_selector_from_dict(spec.get("selector"))
    except SelectorError as exc:
        causes.append(invalid("spec.selector", spec.get("selector"), str(exc)))
    return causes


def pdb_prepare_create(obj: Obj) -> None:
    # Go serializes these status counters even when zero
    obj["status"] = {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}


def pdb_row(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return [obj["metadata"]["name"],
            str(spec["minAvailable"]) if spec.get("minAvailable") is not None else "N/A",
            str(spec["maxUnavailable"]) if spec.get("maxUnavailable") is not None else "N/A",
            int(status.get("disruptionsAllowed") or 0), age(obj, now)]


def pdb_strategy() -> Strategy:
    return Strategy(
        GROUP, "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", short_names=["pdb"],
        subresources=("status",), generation=True, validate=pdb_validate, prepare_create=pdb_prepare_create,
        columns=[NAME(), Column("Min Available", description="The minimum number of pods that must be available."),
                 Column("Max Unavailable", description="The maximum number of pods that may be unavailable."),
                 Column("Allowed Disruptions", "integer",
                        description="Calculated number of pods that may be disrupted at this time."),
                 AGE()],
        row=pdb_row)


# ============================================================================ the disruption controller's arithmetic
def pod_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def scaled(value: Any, total: int) -> int:
    """intstr.GetScaledValueFromIntOrPercent with rounding up, as the disruption controller uses it."""
    if isinstance(value, int):
        return value
    return math.ceil(int(str(value).rstrip("%")) * total / 100)


def parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (TypeError, ValueError):
        return None


ReplicasOf = Callable[[Obj, str], Awaitable[int | None]]


async def expected_scale(pods: list[Obj], namespace: str, replicas_of: ReplicasOf) -> int:
    """Sum of the replicas of the pods' controllers (kube's getExpectedScale); unmanaged pods skipped."""
    total = 0
    seen: set[str] = set()
    for pod in pods:
        ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
        if ref is None or ref.get("uid") in seen:
            continue
        seen.add(ref.get("uid", ""))
        replicas = await replicas_of(ref, namespace)
        total += replicas or 0
    return total


async def compute_status(pdb: Obj, pods: list[Obj], now: dt.datetime, replicas_of: ReplicasOf) -> Obj:
    """A PDB's status over its namespace's pods: the disruption controller's evaluation. Shared by the
    apiserver (on create and eviction) and controllers/disruption.py (on every pod change)."""
    spec = pdb.get("spec") or {}
    selector = label_selector_from_dict(spec.get("selector"))
    matching = [p for p in pods if selector.matches(p["metadata"].get("labels") or {})]
    status = dict(pdb.get("status") or {})
    min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
    if max_unavailable is not None:
        expected = await expected_scale(matching, pdb["metadata"]["namespace"], replicas_of)
        desired = max(0, expected - scaled(max_unavailable, expected))
    elif isinstance(min_available, int):
        expected, desired = len(matching), min_available
    elif min_available is not None:
        expected = await expected_scale(matching, pdb["metadata"]["namespace"], replicas_of)
        desired = scaled(min_available, expected)
    else:
        expected, desired = len(matching), 0
    # disruptedPods: evictions granted but not yet seen as deletions; they do not count as healthy
    disrupted: dict[str, str] = {}
    by_name = {p["metadata"]["name"]: p for p in matching}
    for name, when in (status.get("disruptedPods") or {}).items():
        pod = by_name.get(name)
        at = parse_time(when)
        if pod is None or pod["metadata"].get("deletionTimestamp") or at is None \
                or at + DISRUPTED_POD_TIMEOUT < now:
            continue
        disrupted[name] = when
    healthy = sum(1 for p in matching if not p["metadata"].get("deletionTimestamp")
                  and p["metadata"]["name"] not in disrupted and pod_ready(p))
    allowed = healthy - desired
    if expected <= 0 or allowed <= 0:
        allowed = 0
    status.update(disruptionsAllowed=allowed, currentHealthy=healthy, desiredHealthy=desired,
                  expectedPods=expected, observedGeneration=pdb["metadata"].get("generation", 1))
    if disrupted:
        status["disruptedPods"] = disrupted
    else:
        status.pop("disruptedPods", None)
    condition = {"type": "DisruptionAllowed", "status": "True" if allowed > 0 else "False",
                 "observedGeneration": pdb["metadata"].get("generation", 1),
                 "reason": "SufficientPods" if allowed > 0 else "InsufficientPods", "message": ""}
    previous = next((c for c in status.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None)
    condition["lastTransitionTime"] = (previous["lastTransitionTime"] if previous and
                                       previous.get("status") == condition["status"] else now_rfc3339())
    status["conditions"] = [condition]
    return status


class Disruption:
    """Status computation for one PDB over the pods of its namespace."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pods = registry.strategies[("", "v1", "pods")]
        self.pdbs = registry.strategies[(GROUP, "v1", "poddisruptionbudgets")]

    async def namespace_pods(self, namespace: str) -> list[Obj]:
        return (await self.registry.list(self.pods, namespace, ListOptions()))["items"]

    async def replicas_of(self, ref: Obj, namespace: str) -> int | None:
        """The replicas of a pod's controller through its scale subresource; None when it is gone."""
        group = ref.get("apiVersion", "").rpartition("/")[0]
        owner = next((s for s in self.registry.strategies.values()
                      if s.group == group and s.kind == ref.get("kind") and "scale" in s.subresources), None)
        if owner is None:
            return 1  # a controller without scale (a Job, a DaemonSet...) counts as one
        try:
            obj = await self.registry.get(owner, namespace, ref.get("name", ""))
        except errors.ApiError:
            return None
        return int((obj.get("spec") or {}).get("replicas") or 0)

    async def compute(self, pdb: Obj, pods: list[Obj], now: dt.datetime) -> Obj:
        return await compute_status(pdb, pods, now, self.replicas_of)

    async def admit(self, pdb: Obj) -> None:
        """On create: the controller's first evaluation, so the new PDB already shows its allowance."""
        try:
            pods = await self.namespace_pods(pdb["metadata"]["namespace"])
            pdb["status"] = await self.compute(pdb, pods, dt.datetime.now(dt.UTC))
        except SelectorError:
            pass  # validation reports it

    # ------------------------------------------------------------------ eviction
    async def evict(self, namespace: str, name: str, body: Obj, wo: WriteOptions) -> Obj:
        if body.get("kind") not in (None, "", "Eviction") or \
                body.get("apiVersion") not in (None, "", *EVICTION_VERSIONS):
            raise errors.bad_request(f"the object provided is unrecognized (must be of type Eviction): "
                                     f"{body.get('apiVersion', '')}, Kind={body.get('kind', '')}")
        if (body.get("metadata") or {}).get("name", name) != name:
            raise errors.bad_request("name in URL does not match name in Eviction object")
        options = dict(body.get("deleteOptions") or {})
        dry_run = options.get("dryRun") or []
        if any(d != "All" for d in dry_run):
            raise errors.bad_request(f'dryRun: Unsupported value: "{dry_run[0]}": supported values: "All"')
        if dry_run and not wo.dry_run:
            wo = WriteOptions(True, wo.field_manager, wo.user_agent, wo.field_validation)
        pod = await self.registry.get(self.pods, namespace, name)
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed", "Pending") or pod["metadata"].get("deletionTimestamp"):
            return await self.delete_pod(namespace, name, options, wo)
        labels = pod["metadata"].get("labels") or {}
        pdbs = []
        for pdb in (await self.registry.list(self.pdbs, namespace, ListOptions()))["items"]:
            try:
                if label_selector_from_dict((pdb.get("spec") or {}).get("selector")).matches(labels):
                    pdbs.append(pdb)
            except SelectorError:
                continue
        if not pdbs:
            return await self.delete_pod(namespace, name, options, wo)
        if len(pdbs) > 1:
            raise errors.ApiError(errors.status(500, "InternalError", "This pod has more than one "
                                                "PodDisruptionBudget, which the eviction subresource does not "
                                                "support."))
        await self.check_and_decrement(pdbs[0], pod, wo)
        return await self.delete_pod(namespace, name, options, wo)

    async def check_and_decrement(self, pdb: Obj, pod: Obj, wo: WriteOptions) -> None:
        namespace, pdb_name = pdb["metadata"]["namespace"], pdb["metadata"]["name"]
        pod_name = pod["metadata"]["name"]
        pods = await self.namespace_pods(namespace)
        now = dt.datetime.now(dt.UTC)
        verdict: list[str] = []

        def decide(current: Obj) -> Obj:
            verdict.clear()
            status = current["status"]
            healthy = pod_ready(pod)
            policy = (current.get("spec") or {}).get("unhealthyPodEvictionPolicy") or "IfHealthyBudget"
            if not healthy and (policy == "AlwaysAllow"
                                or status["currentHealthy"] >= status["desiredHealthy"] > 0):
                verdict.append("unhealthy")
                return current
            if status["disruptionsAllowed"] < 0:
                raise errors.forbidden("pdb disruptions allowed is negative")
            if len(status.get("disruptedPods") or {}) > MAX_DISRUPTED_PODS:
                raise errors.forbidden("DisruptedPods map too big - too many evictions not confirmed by PDB "
                                       "controller")
            if status["disruptionsAllowed"] == 0:
                verdict.append("blocked")
                return current
            status["disruptionsAllowed"] -= 1
            if status["disruptionsAllowed"] == 0:
                status["conditions"][0].update(status="False", reason="InsufficientPods",
                                               lastTransitionTime=now_rfc3339())
            status.setdefault("disruptedPods", {})[pod_name] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
            return current

        async def evaluate(current: Obj) -> Obj:
            current["status"] = await self.compute(current, pods, now)
            return decide(current)

        # the evaluation is written back (status subresource) even when it blocks, as the controller would;
        # a concurrent eviction changing the PDB first makes this one re-evaluate (optimistic concurrency)
        status_wo = WriteOptions(field_manager="ultraplane-disruption", dry_run=wo.dry_run)
        for _attempt in range(16):
            current = await self.registry.get(self.pdbs, namespace, pdb_name)
            rv = current["metadata"]["resourceVersion"]
            updated = await evaluate(current)
            try:
                await self.registry.guaranteed_update(self.pdbs, namespace, pdb_name,
                                                      functools.partial(_with_status, status=updated["status"]), status_wo,
                                                      subresource="status", precondition_rv=rv)
            except errors.ApiError as exc:
                if exc.code == 409:
                    continue
                raise
            break
        else:
            raise errors.conflict(GROUP, "poddisruptionbudgets", pdb_name, errors.MODIFIED)
        if verdict == ["blocked"]:
            status = updated["status"]
            raise errors.ApiError(errors.status(429, "TooManyRequests", BUDGET_VIOLATION, {"causes": [{
                "reason": "DisruptionBudget",
                "message": f"The disruption budget {pdb_name} needs {status['desiredHealthy']} healthy pods and "
                           f"has {status['currentHealthy']} currently"}]}))

    async def serve(self, request: Request, namespace: str, name: str, verb: str) -> Response:
        """POST pods/NAME/eviction (policy/v1 or policy/v1beta1 Eviction, JSON or protobuf)."""
        if verb != "create":
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        body = ApiServer.decode_body(request, "Eviction")
        wo = WriteOptions.from_query(request.query, request.headers.get("user-agent", ""))
        return json_response(201, await self.evict(namespace, name, body, wo))

    async def delete_pod(self, namespace: str, name: str, options: Obj, wo: WriteOptions) -> Obj:
        await self.registry.delete(self.pods, namespace, name, options, wo)
        return errors.success_status()


def _with_status(current: Obj, status: Obj) -> Obj:
    current["status"] = status
    return current


def install(registry: Registry) -> Disruption:
    """The PDB create hook; returns the object that serves pods/eviction."""
    disruption = Disruption(registry)
    registry.admission["poddisruptionbudgets"] = disruption.admit
    return disruption
