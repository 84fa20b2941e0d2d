"""API Priority and Fairness (flowcontrol.apiserver.k8s.io/v1) and the capacity tiers.

Three parts:

* the FlowSchema and PriorityLevelConfiguration ``Strategy``s with kube's table columns, and the
  mandatory + suggested objects kube-apiserver creates at start (``bootstrap_objects``);
* ``FlowControl``, the dispatcher in the request path: each request is classified by the first
  FlowSchema (lowest matchingPrecedence) whose rules match its user and verb/resource or URL,
  which names a priority level. Exempt levels run at once. Limited levels own a share of the
  server's seats (``nominalConcurrencyShares``); the ``lendablePercent`` part of every level forms
  a pool the others may borrow from (up to their ``borrowingLimitPercent``). A request that finds
  no free seats waits in one of its level's queues, picked by shuffle sharding on its flow
  (FlowSchema + user or namespace), and queues are served by fair queuing on seats, so one busy
  flow cannot starve the others. A full queue, a waiting timeout or a ``Reject`` level answers
  429 with Retry-After, as kube-apiserver does;
* ``Tier``: the seats the server has (``--tier``), fixed for provisioned tiers, adapting to load
  (with a visible scale-up delay) for the standard tier, plus its database quota.

Seats follow kube's work estimator: one per request, a LIST ceil(objects / 100) up to 10 (objects
= the limit when smaller than the stored count), a watch one seat while it initialises.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ultraplane.apiserver.errors import ApiError
from ultraplane.apiserver.metrics import Histogram, histogram_family
from ultraplane.apiserver.registry import Column, Obj, Strategy
from ultraplane.apiserver.server import Request, Response

log = logging.getLogger("ultraplane.apiserver.flowcontrol")

GROUP = "flowcontrol.apiserver.k8s.io"
API_VERSION = f"{GROUP}/v1"
FS_UID_HEADER = "X-Kubernetes-PF-FlowSchema-UID"
PL_UID_HEADER = "X-Kubernetes-PF-PriorityLevel-UID"
AUTOUPDATE = "apf.kubernetes.io/autoupdate-spec"
TOO_MANY = b"Too many requests, please try again later.\n"
OBJECTS_PER_SEAT = 100
MAX_SEATS = 10
QUEUE_WAIT_TIMEOUT = 15.0  # kube: a quarter of the 60 s request timeout
WAIT_BUCKETS = (0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0)
EVERYTHING_RULES = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                                       "namespaces": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}
GIB = 1024**3


# ============================================================================ tiers
TIER_SEATS = {"xl": 1000, "2xl": 2600, "4xl": 6800, "8xl": 13600}
TIERS = ("standard", *TIER_SEATS)
# The standard tier starts with what one API server process can really run side by side and grows
# to kube-apiserver's default (400 + 200 inflight) while requests queue and the process has CPU left.
STANDARD_MIN_SEATS = 60
STANDARD_MAX_SEATS = 600
CPU_SATURATED = 0.85  # share of one core the event loop thread used in the last second
PROVISIONED_QUOTA = 16 * GIB
STANDARD_QUOTA = 8 * GIB


@dataclass
class ScaleEvent:
    at: float
    seats_from: int
    seats_to: int
    delay: float  # seconds between the start of sustained queuing and the new capacity


@dataclass
class Tier:
    """The server's total seats and database quota. ``standard`` scales its seats with the load."""

    name: str = "standard"
    seats: int = STANDARD_MIN_SEATS
    min_seats: int = STANDARD_MIN_SEATS
    max_seats: int = STANDARD_MAX_SEATS
    quota_bytes: int = STANDARD_QUOTA
    scale_up_delay: float = 10.0  # queues must stay non-empty this long before capacity grows
    scale_down_after: float = 300.0
    events: list[ScaleEvent] = field(default_factory=list)

    @property
    def adaptive(self) -> bool:
        return self.name == "standard" and self.max_seats > self.min_seats

    def describe(self) -> dict[str, Any]:
        return {"tier": self.name, "seats": self.seats, "minSeats": self.min_seats, "maxSeats": self.max_seats,
                "adaptive": self.adaptive, "databaseQuotaBytes": self.quota_bytes,
                "scaleUpDelaySeconds": self.scale_up_delay,
                "scaleEvents": [{"time": dt.datetime.fromtimestamp(e.at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "from": e.seats_from, "to": e.seats_to, "delaySeconds": round(e.delay, 3)}
                                for e in self.events[-20:]]}


def make_tier(name: str, max_requests_inflight: int = 0, max_mutating_requests_inflight: int = 0,
              scale_up_delay: float = 10.0) -> Tier:
    """``--tier`` plus kube's --max-requests-inflight/--max-mutating-requests-inflight, whose sum (when
    given) fixes the server's seats as it does in kube-apiserver with APF on."""
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}: want one of {', '.join(TIERS)}")
    fixed = max_requests_inflight + max_mutating_requests_inflight
    if name == "standard":
        tier = Tier("standard", STANDARD_MIN_SEATS, STANDARD_MIN_SEATS, STANDARD_MAX_SEATS, STANDARD_QUOTA,
                    scale_up_delay)
    else:
        seats = TIER_SEATS[name]
        tier = Tier(name, seats, seats, seats, PROVISIONED_QUOTA, scale_up_delay)
    if fixed > 0:
        tier.seats = tier.min_seats = tier.max_seats = fixed
    return tier


# ============================================================================ bootstrap objects
def _level(name: str, shares: int, lendable: int, queues: int = 0, hand: int = 0, length: int = 0) -> Obj:
    limit_response: Obj = {"type": "Reject"}
    if queues:
        limit_response = {"type": "Queue", "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": length}}
    return {"apiVersion": API_VERSION, "kind": "PriorityLevelConfiguration",
            "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}},
            "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares, "lendablePercent": lendable,
                                                    "limitResponse": limit_response}}}


def _groups(*names: str) -> list[Obj]:
    return [{"kind": "Group", "group": {"name": n}} for n in names]


def _users(*names: str) -> list[Obj]:
    return [{"kind": "User", "user": {"name": n}} for n in names]


def _kube_system_sa(name: str = "*") -> list[Obj]:
    return [{"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": "kube-system"}}]


def _rule(verbs: list[str], groups: list[str], resources: list[str], namespaces: list[str] | None = None,
          cluster: bool = False) -> Obj:
    rule: Obj = {"verbs": verbs, "apiGroups": groups, "resources": resources}
    if cluster:
        rule["clusterScope"] = True
    if namespaces:
        rule["namespaces"] = namespaces
    return rule


def _schema(name: str, level: str, precedence: int, method: str, subjects: list[Obj],
            rules: Obj | None = None) -> Obj:
    spec: Obj = {"priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence}
    if method:
        spec["distinguisherMethod"] = {"type": method}
    spec["rules"] = [{"subjects": subjects, **(rules if rules is not None else EVERYTHING_RULES)}]
    return {"apiVersion": API_VERSION, "kind": "FlowSchema",
            "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}}, "spec": spec}


def bootstrap_objects() -> tuple[list[Obj], list[Obj]]:
    """kube-apiserver's mandatory and suggested priority levels and flow schemas (v1.32 values)."""
    everyone = _groups("system:unauthenticated", "system:authenticated")
    exempt = {"apiVersion": API_VERSION, "kind": "PriorityLevelConfiguration",
              "metadata": {"name": "exempt", "annotations": {AUTOUPDATE: "true"}},
              "spec": {"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}}
    levels = [
        exempt,
        _level("system", 30, 33, 64, 6, 50),
        _level("node-high", 40, 25, 64, 6, 50),
        _level("leader-election", 10, 0, 16, 4, 50),
        _level("workload-high", 40, 50, 128, 6, 50),
        _level("workload-low", 100, 90, 128, 6, 50),
        _level("global-default", 20, 50, 128, 6, 50),
        _level("catch-all", 5, 0),
    ]
    leader_rules = [_rule(["get", "create", "update"], ["coordination.k8s.io"], ["leases"], ["*"])]
    schemas = [
        _schema("exempt", "exempt", 1, "", _groups("system:masters")),
        _schema("probes", "exempt", 2, "", everyone, {"nonResourceRules": [
            {"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]}),
        _schema("system-leader-election", "leader-election", 100, "ByUser",
                _users("system:kube-controller-manager", "system:kube-scheduler"), {"resourceRules": [
                    _rule(["get", "create", "update"], [""], ["endpoints", "configmaps"], ["kube-system"]),
                    *leader_rules]}),
        _schema("endpoint-controller", "workload-high", 150, "ByUser",
                [*_users("system:kube-controller-manager"), *_kube_system_sa("endpoint-controller")],
                {"resourceRules": [_rule(["get", "create", "update"], [""], ["endpoints"], ["*"])]}),
        _schema("workload-leader-election", "leader-election", 200, "ByUser", _kube_system_sa(), {"resourceRules": [
            _rule(["get", "create", "update"], [""], ["endpoints", "configmaps"], ["*"]), *leader_rules]}),
        _schema("system-node-high", "node-high", 400, "ByUser", _groups("system:nodes"), {"resourceRules": [
            _rule(["*"], [""], ["nodes", "nodes/status"], cluster=True),
            _rule(["*"], ["coordination.k8s.io"], ["leases"], ["*"])]}),
        _schema("system-nodes", "system", 500, "ByUser", _groups("system:nodes")),
        _schema("kube-controller-manager", "workload-high", 800, "ByNamespace",
                _users("system:kube-controller-manager")),
        _schema("kube-scheduler", "workload-high", 800, "ByNamespace", _users("system:kube-scheduler")),
        _schema("kube-system-service-accounts", "workload-high", 900, "ByNamespace", _kube_system_sa()),
        _schema("service-accounts", "workload-low", 9000, "ByUser", _groups("system:serviceaccounts")),
        _schema("global-default", "global-default", 9900, "ByUser", everyone),
        _schema("catch-all", "catch-all", 10000, "ByUser", everyone),
    ]
    return levels, schemas


# ============================================================================ strategies
def level_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("type") == "Exempt":
        exempt = spec.setdefault("exempt", {})
        exempt.setdefault("nominalConcurrencyShares", 0)
        exempt.setdefault("lendablePercent", 0)
    elif spec.get("type") == "Limited":
        limited = spec.setdefault("limited", {})
        limited.setdefault("nominalConcurrencyShares", 30)
        limited.setdefault("lendablePercent", 0)
        response = limited.setdefault("limitResponse", {"type": "Reject"})
        if response.get("type") == "Queue":
            queuing = response.setdefault("queuing", {})
            queuing.setdefault("queues", 64)
            queuing.setdefault("handSize", 8)
            queuing.setdefault("queueLengthLimit", 50)
    obj.setdefault("status", {})


def level_validate(obj: Obj, old: Obj | None) -> list[Obj]:
    spec = obj.get("spec") or {}
    kind = spec.get("type")
    if kind not in ("Exempt", "Limited"):
        return [{"reason": "FieldValueNotSupported", "field": "spec.type",
                 "message": f'Unsupported value: "{kind or ""}": supported values: "Exempt", "Limited"'}]
    causes: list[Obj] = []
    if kind == "Limited":
        limited = spec.get("limited") or {}
        shares = limited.get("nominalConcurrencyShares", 0)
        if not isinstance(shares, int) or shares < 0:
            causes.append({"reason": "FieldValueInvalid", "field": "spec.limited.nominalConcurrencyShares",
                           "message": f"Invalid value: {shares}: must be non-negative"})
        queuing = (limited.get("limitResponse") or {}).get("queuing") or {}
        if queuing:
            queues, hand = queuing.get("queues", 0), queuing.get("handSize", 0)
            if isinstance(queues, int) and isinstance(hand, int) and hand > queues:
                causes.append({"reason": "FieldValueInvalid", "field": "spec.limited.limitResponse.queuing.handSize",
                               "message": f"Invalid value: {hand}: should not be greater than queues ({queues})"})
    return causes


def schema_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("matchingPrecedence", 1000)
    obj.setdefault("status", {})


def schema_validate(obj: Obj, old: Obj | None) -> list[Obj]:
    spec = obj.get("spec") or {}
    causes: list[Obj] = []
    if not (spec.get("priorityLevelConfiguration") or {}).get("name"):
        causes.append({"reason": "FieldValueRequired", "field": "spec.priorityLevelConfiguration.name",
                       "message": "Required value: must reference a priority level"})
    precedence = spec.get("matchingPrecedence")
    if not isinstance(precedence, int) or not 1 <= precedence <= 10000:
        causes.append({"reason": "FieldValueInvalid", "field": "spec.matchingPrecedence",
                       "message": f"Invalid value: {precedence}: must be between 1 and 10000, inclusive"})
    method = (spec.get("distinguisherMethod") or {}).get("type")
    if spec.get("distinguisherMethod") is not None and method not in ("ByUser", "ByNamespace"):
        causes.append({"reason": "FieldValueNotSupported", "field": "spec.distinguisherMethod.type",
                       "message": f'Unsupported value: "{method or ""}": supported values: "ByNamespace", "ByUser"'})
    return causes


def schema_row(obj: Obj, now: dt.datetime) -> list[Any]:
    from ultraplane.apiserver.resources import age

    spec = obj.get("spec") or {}
    dangling = "?"
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Dangling":
            dangling = cond.get("status", "?")
            break
    method = (spec.get("distinguisherMethod") or {}).get("type") or "<none>"
    return [obj["metadata"]["name"], (spec.get("priorityLevelConfiguration") or {}).get("name", ""),
            spec.get("matchingPrecedence", 0), method, age(obj, now), dangling]


def level_row(obj: Obj, now: dt.datetime) -> list[Any]:
    from ultraplane.apiserver.resources import age

    spec = obj.get("spec") or {}
    shares: Any = "<none>"
    queues: Any = "<none>"
    hand: Any = "<none>"
    length: Any = "<none>"
    limited = spec.get("limited")
    if limited is not None:
        shares = limited.get("nominalConcurrencyShares", 0)
        queuing = (limited.get("limitResponse") or {}).get("queuing")
        if queuing:
            queues, hand, length = queuing.get("queues"), queuing.get("handSize"), queuing.get("queueLengthLimit")
    return [obj["metadata"]["name"], spec.get("type", ""), shares, queues, hand, length, age(obj, now)]


@dataclass
class SortedTableStrategy(Strategy):
    """A strategy whose table rows come in a type-specific order (kube prints FlowSchemas by precedence)."""

    table_sort: Callable[[Obj], Any] | None = None


def schema_order(obj: Obj) -> tuple[int, str]:
    return (obj.get("spec") or {}).get("matchingPrecedence", 0), obj["metadata"]["name"]


def strategies() -> list[Strategy]:
    from ultraplane.apiserver.resources import AGE, NAME

    return [
        SortedTableStrategy(GROUP, "v1", "FlowSchema", "flowschemas", "flowschema", namespaced=False, subresources=("status",),
                 generation=True, defaults=schema_defaults, validate=schema_validate,
                 columns=[NAME(), Column("PriorityLevel", description="`name` is the name of the priority level "
                                         "configuration being referenced Required."),
                          Column("MatchingPrecedence", description="`matchingPrecedence` is used to choose among the "
                                 "FlowSchemas that match a given request."),
                          Column("DistinguisherMethod", description="`distinguisherMethod` defines how to compute "
                                 "the flow distinguisher for requests that match this schema."),
                          AGE(), Column("MissingPL", description="references a broken or non-existent "
                                        "PriorityLevelConfiguration")],
                 row=schema_row, table_sort=schema_order),
        Strategy(GROUP, "v1", "PriorityLevelConfiguration", "prioritylevelconfigurations",
                 "prioritylevelconfiguration", namespaced=False, subresources=("status",), generation=True,
                 defaults=level_defaults, validate=level_validate,
                 columns=[NAME(), Column("Type", description="`type` indicates whether this priority level is "
                                         "subject to limitation on request execution."),
                          Column("NominalConcurrencyShares", description="`nominalConcurrencyShares` (NCS) "
                                 "contributes to the computation of the NominalConcurrencyLimit (NominalCL) of "
                                 "this level."),
                          Column("Queues", description="`queues` is the number of queues for this priority level."),
                          Column("HandSize", description="`handSize` is a small positive number that configures "
                                 "the shuffle sharding of requests into queues."),
                          Column("QueueLengthLimit", description="`queueLengthLimit` is the maximum number of "
                                 "requests allowed to be waiting in a given queue of this priority level at a time"),
                          AGE()],
                 row=level_row),
    ]


# ============================================================================ classification
@dataclass
class Subject:
    kind: str
    name: str
    namespace: str = ""

    def matches(self, user: str, groups: list[str]) -> bool:
        if self.kind == "User":
            return self.name == "*" or self.name == user
        if self.kind == "Group":
            return self.name == "*" or self.name in groups
        prefix = f"system:serviceaccount:{self.namespace}:"
        return user.startswith(prefix) and (self.name == "*" or user[len(prefix):] == self.name)


@dataclass
class ResourceRule:
    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    cluster: bool
    namespaces: frozenset[str]

    def matches(self, info: Any) -> bool:
        if "*" not in self.verbs and info.verb not in self.verbs:
            return False
        if "*" not in self.groups and info.group not in self.groups:
            return False
        if "*" not in self.resources:
            resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
            if resource not in self.resources:
                return False
        if not info.namespace:
            return self.cluster
        return "*" in self.namespaces or info.namespace in self.namespaces


@dataclass
class NonResourceRule:
    verbs: frozenset[str]
    urls: list[str]

    def matches(self, verb: str, path: str) -> bool:
        if "*" not in self.verbs and verb not in self.verbs:
            return False
        for url in self.urls:
            if url == "*" or url == path or (url.endswith("/*") and path.startswith(url[:-1])):
                return True
        return False


@dataclass
class PolicyRule:
    subjects: list[Subject]
    resources: list[ResourceRule]
    non_resources: list[NonResourceRule]


CLASSIFY_MEMO_SIZE = 10_000


@dataclass
class Schema:
    name: str
    uid: str
    level: str
    precedence: int
    method: str  # "" | ByUser | ByNamespace
    rules: list[PolicyRule]

    def matches(self, user: str, groups: list[str], info: Any, method: str, path: str) -> bool:
        for rule in self.rules:
            if not any(s.matches(user, groups) for s in rule.subjects):
                continue
            if info is not None:
                if any(r.matches(info) for r in rule.resources):
                    return True
            elif rule.non_resources:
                verb = method.lower()
                if any(r.matches(verb, path) for r in rule.non_resources):
                    return True
        return False


def compile_schema(obj: Obj) -> Schema:
    spec = obj.get("spec") or {}
    rules = []
    for rule in spec.get("rules") or []:
        subjects = []
        for s in rule.get("subjects") or []:
            kind = s.get("kind", "")
            if kind == "User":
                subjects.append(Subject(kind, (s.get("user") or {}).get("name", "")))
            elif kind == "Group":
                subjects.append(Subject(kind, (s.get("group") or {}).get("name", "")))
            elif kind == "ServiceAccount":
                sa = s.get("serviceAccount") or {}
                subjects.append(Subject(kind, sa.get("name", ""), sa.get("namespace", "")))
        resources = [ResourceRule(frozenset(r.get("verbs") or ()), frozenset(r.get("apiGroups") or ()),
                                  frozenset(r.get("resources") or ()), bool(r.get("clusterScope")),
                                  frozenset(r.get("namespaces") or ())) for r in rule.get("resourceRules") or []]
        non_resources = [NonResourceRule(frozenset(r.get("verbs") or ()), list(r.get("nonResourceURLs") or ()))
                         for r in rule.get("nonResourceRules") or []]
        rules.append(PolicyRule(subjects, resources, non_resources))
    meta = obj["metadata"]
    return Schema(meta["name"], meta.get("uid", ""), (spec.get("priorityLevelConfiguration") or {}).get("name", ""),
                  int(spec.get("matchingPrecedence") or 1000), (spec.get("distinguisherMethod") or {}).get("type", ""),
                  rules)


# ============================================================================ dispatching
class Waiter:
    __slots__ = ("future", "width", "queue", "enqueued")

    def __init__(self, future: asyncio.Future[None], width: int, queue: Queue) -> None:
        self.future = future
        self.width = width
        self.queue = queue
        self.enqueued = time.monotonic()


class Queue:
    __slots__ = ("waiters", "virtual", "executing", "waiting_seats")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.virtual = 0.0  # seats this queue has been served, for fair queuing
        self.executing = 0
        self.waiting_seats = 0


class Level:
    """The runtime state of one priority level: its seat limits, queues and counters."""

    def __init__(self, obj: Obj) -> None:
        self.queues: list[Queue] = []
        self.executing = 0  # seats in use
        self.waiting = 0  # requests in queues
        self.nominal = 0
        self.guaranteed = 0  # nominal minus what it lends
        self.ceiling = 0  # nominal plus what it may borrow
        self.reconfigure(obj)

    def reconfigure(self, obj: Obj) -> None:
        """Apply a (new) spec in place: requests in flight keep their seats and their queue if it remains."""
        self.name: str = obj["metadata"]["name"]
        self.uid: str = obj["metadata"].get("uid", "")
        spec = obj.get("spec") or {}
        self.exempt = spec.get("type") == "Exempt"
        limited = spec.get("limited") or {}
        self.shares = 0 if self.exempt else int(limited.get("nominalConcurrencyShares", 30))
        self.lendable_percent = int(limited.get("lendablePercent") or 0)
        borrowing = limited.get("borrowingLimitPercent")
        self.borrowing_percent: int | None = int(borrowing) if borrowing is not None else None
        response = limited.get("limitResponse") or {}
        self.reject = self.exempt or response.get("type") != "Queue"
        queuing = response.get("queuing") or {}
        count = 0 if self.reject else max(1, int(queuing.get("queues") or 1))
        if count != len(self.queues):
            for queue in self.queues:  # the old queues go away: their waiters are turned down
                for waiter in queue.waiters:
                    if not waiter.future.done():
                        waiter.future.set_exception(Rejected("time-out"))
                self.waiting -= len(queue.waiters)
            self.queues = [Queue() for _ in range(count)]
        self.hand_size = max(1, min(int(queuing.get("handSize") or 1), count or 1))
        self.queue_length_limit = int(queuing.get("queueLengthLimit") or 50)

    def set_limits(self, nominal: int) -> None:
        self.nominal = nominal
        self.guaranteed = nominal - round_half_up(nominal * self.lendable_percent / 100)
        self.ceiling = nominal + (round_half_up(nominal * self.borrowing_percent / 100)
                                  if self.borrowing_percent is not None else 1 << 30)


def round_half_up(value: float) -> int:
    """Go's math.Round, which kube uses for lendable and borrowing seats (Python's round() rounds to even)."""
    return math.floor(value + 0.5)


async def run_caught(call: Callable[[], Awaitable[Response]]) -> Response:
    """Run the request; an API error becomes its Status response here so it carries the PF headers too."""
    try:
        return await call()
    except ApiError as exc:
        return Response(exc.code, orjson.dumps(exc.status, option=orjson.OPT_APPEND_NEWLINE))


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def deal(hash_value: int, deck: int, hand: int) -> list[int]:
    """Shuffle sharding: a hand of distinct queue indexes drawn from the flow's hash (kube's Dealer)."""
    cards: list[int] = []
    for i in range(hand):
        remaining = deck - i
        card = hash_value % remaining
        hash_value //= remaining
        for picked in sorted(cards):  # skip queues already in the hand
            if card >= picked:
                card += 1
        cards.append(card)
    return cards


class FlowControl(Collector):
    """The APF dispatcher. ``handle`` wraps one request; ``run`` keeps configuration and tier current."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.schemas: list[Schema] = []
        self.classified: dict[tuple[Any, ...], tuple[Schema, Level]] = {}
        self.levels: dict[str, Level] = {}
        self.waiting_levels: set[Level] = set()
        self.pool = 0  # the lendable seats of all levels
        self.pool_used = 0
        self.object_counts: dict[str, int] = {}
        self.executing: dict[tuple[str, str], int] = {}
        self.inqueue: dict[tuple[str, str], int] = {}
        self.dispatched: dict[tuple[str, str], int] = {}
        self.rejected: dict[tuple[str, str, str], int] = {}
        self.waits: dict[tuple[str, str, str], Histogram] = {}
        self.pressure_since: float | None = None
        self.calm_since = time.monotonic()
        self.peak_seats = 0
        self.rejections_seen = 0
        self.cpu_busy = 0.0

    # ---------------------------------------------------------------- configuration
    def configure(self, schemas: list[Obj], levels: list[Obj]) -> None:
        new_levels = {}
        for obj in levels:
            level = self.levels.get(obj["metadata"]["name"])
            if level is None:
                level = Level(obj)
            else:
                level.reconfigure(obj)
            new_levels[level.name] = level
        self.levels = new_levels
        self.waiting_levels = {lv for lv in new_levels.values() if lv.waiting}
        self.schemas = sorted((compile_schema(o) for o in schemas), key=lambda s: (s.precedence, s.name))
        self.classified.clear()
        self.apply_seats()

    def apply_seats(self) -> None:
        """Split the tier's seats over the limited levels by nominalConcurrencyShares (rounded up, as kube)."""
        limited = [lv for lv in self.levels.values() if not lv.exempt]
        total = sum(lv.shares for lv in limited) or 1
        for lv in limited:
            lv.set_limits(max(1, math.ceil(self.tier.seats * lv.shares / total)))
        self.pool = sum(lv.nominal - lv.guaranteed for lv in limited)
        self.pool_used = sum(max(0, lv.executing - lv.guaranteed) for lv in limited)
        self.dispatch_waiting()

    def classify(self, user: str, groups: list[str], info: Any, method: str, path: str) -> tuple[Schema, Level]:
        # The answer depends only on these attributes, and a few clients (kubelets, controllers) send most
        # requests: remember it until the FlowSchemas change (configure() clears the memo).
        if info is not None:
            key: tuple[Any, ...] = (user, tuple(groups), info.verb, info.group, info.resource, info.subresource,
                                    info.namespace)
        else:
            key = (user, tuple(groups), method, path)
        found = self.classified.get(key)
        if found is not None:
            return found
        found = self._classify(user, groups, info, method, path)
        if len(self.classified) >= CLASSIFY_MEMO_SIZE:
            self.classified.clear()
        self.classified[key] = found
        return found

    def _classify(self, user: str, groups: list[str], info: Any, method: str, path: str) -> tuple[Schema, Level]:
        for schema in self.schemas:
            level = self.levels.get(schema.level)
            if level is not None and schema.matches(user, groups, info, method, path):
                return schema, level
        catch_all = self.levels.get("catch-all")
        if catch_all is None:  # no configuration yet (bootstrapping): let the request through
            return BOOTSTRAP_SCHEMA, BOOTSTRAP_LEVEL
        return CATCH_ALL_SCHEMA, catch_all

    def width(self, info: Any, query: dict[str, str]) -> int:
        if info is None or info.verb != "list":
            return 1
        count = self.object_counts.get(info.resource, 0)
        limit = query.get("limit")
        if limit and limit.isdigit() and 0 < int(limit) < count:
            count = int(limit)
        return min(MAX_SEATS, max(1, math.ceil(count / OBJECTS_PER_SEAT)))

    # ---------------------------------------------------------------- the request path
    async def handle(self, request: Request, user: str, groups: list[str], info: Any,
                     call: Callable[[], Awaitable[Response]]) -> Response:
        schema, level = self.classify(user, groups, info, request.method, request.path)
        key = (level.name, schema.name)
        if level.exempt:
            self.executing[key] = self.executing.get(key, 0) + 1
            self.dispatched[key] = self.dispatched.get(key, 0) + 1
            self._wait(key, "true", 0.0)
            try:
                response = await run_caught(call)
            finally:
                self.executing[key] -= 1
            return self._headers(response, schema, level)
        width = min(self.width(info, request.query), max(1, level.nominal))
        started = time.monotonic()
        queue: Queue | None = None
        if level.waiting == 0 and self._fits(level, width):
            self._take(level, width)
        elif level.reject:
            return self._reject(key, "concurrency-limit", schema, level, started)
        else:
            try:
                queue = await self._enqueue(level, schema, user, info, width, key)
            except Rejected as exc:
                return self._reject(key, exc.reason, schema, level, started)
        self.executing[key] = self.executing.get(key, 0) + 1
        self.dispatched[key] = self.dispatched.get(key, 0) + 1
        self._wait(key, "true", time.monotonic() - started)
        try:
            response = await run_caught(call)
        finally:
            self.executing[key] -= 1
            # The event loop is one processor: everything that runs in this pass of the loop runs at the same
            # time as this request, so its seats stay taken until the loop has moved on. Releasing them at
            # once would let a flood of requests that never suspend run back to back in one pass, each
            # seeing an idle level, and hold everyone else up for the whole pass.
            asyncio.get_running_loop().call_soon(self._finish, level, width, queue)
        return self._headers(response, schema, level)

    def _finish(self, level: Level, width: int, queue: Queue | None) -> None:
        if queue is not None:
            queue.executing -= width
        self._release(level, width)

    async def _enqueue(self, level: Level, schema: Schema, user: str, info: Any, width: int,
                       key: tuple[str, str]) -> Queue:
        flow = schema.name + "\0" + (user if schema.method == "ByUser" else
                                     (info.namespace if info is not None else "") if schema.method == "ByNamespace"
                                     else "")
        queues = level.queues
        hand = deal(hash(flow) & 0xFFFFFFFFFFFF, len(queues), level.hand_size)
        queue = min((queues[i] for i in hand), key=lambda q: q.waiting_seats + q.executing)
        if len(queue.waiters) >= level.queue_length_limit:
            raise Rejected("queue-full")
        if not queue.waiters and not queue.executing:
            busy = [q.virtual for q in queues if q.waiters]
            queue.virtual = max(queue.virtual, min(busy) if busy else queue.virtual)
        waiter = Waiter(asyncio.get_running_loop().create_future(), width, queue)
        queue.waiters.append(waiter)
        queue.waiting_seats += width
        level.waiting += 1
        self.waiting_levels.add(level)
        self.inqueue[key] = self.inqueue.get(key, 0) + 1
        self._note_pressure()
        try:
            async with asyncio.timeout(QUEUE_WAIT_TIMEOUT):
                await waiter.future
            return queue
        except TimeoutError:
            self._dequeue(level, waiter)
            raise Rejected("time-out") from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                queue.executing -= width  # dispatched just before the cancel: give the seats back
                self._release(level, width)
            else:
                self._dequeue(level, waiter)
            raise
        finally:
            self.inqueue[key] -= 1

    def _dequeue(self, level: Level, waiter: Waiter) -> None:
        try:
            waiter.queue.waiters.remove(waiter)
        except ValueError:
            return
        waiter.queue.waiting_seats -= waiter.width
        level.waiting -= 1
        if not level.waiting:
            self.waiting_levels.discard(level)

    def _fits(self, level: Level, width: int) -> bool:
        after = level.executing + width
        if after <= level.guaranteed:
            return True
        if after > level.ceiling:
            return False
        extra = max(0, after - level.guaranteed) - max(0, level.executing - level.guaranteed)
        return self.pool_used + extra <= self.pool

    def _take(self, level: Level, width: int) -> None:
        before = max(0, level.executing - level.guaranteed)
        level.executing += width
        self.pool_used += max(0, level.executing - level.guaranteed) - before
        seats = self.pool_used + sum(min(lv.executing, lv.guaranteed) for lv in self.levels.values())
        if seats > self.peak_seats:
            self.peak_seats = seats

    def _release(self, level: Level, width: int) -> None:
        before = max(0, level.executing - level.guaranteed)
        level.executing -= width
        self.pool_used -= before - max(0, level.executing - level.guaranteed)
        if self.waiting_levels:
            self.dispatch_waiting()

    def dispatch_waiting(self) -> None:
        for level in list(self.waiting_levels):
            while level.waiting:
                queue = min((q for q in level.queues if q.waiters), key=lambda q: q.virtual)
                waiter = queue.waiters[0]
                if not self._fits(level, waiter.width):
                    break
                queue.waiters.popleft()
                queue.waiting_seats -= waiter.width
                queue.virtual += waiter.width
                level.waiting -= 1
                if waiter.future.done():  # timed out or cancelled meanwhile
                    continue
                self._take(level, waiter.width)
                queue.executing += waiter.width
                waiter.future.set_result(None)
            if not level.waiting:
                self.waiting_levels.discard(level)

    def _wait(self, key: tuple[str, str], executed: str, seconds: float) -> None:
        hist_key = (executed, key[1], key[0])
        hist = self.waits.get(hist_key)
        if hist is None:
            hist = self.waits[hist_key] = Histogram(WAIT_BUCKETS)
        hist.observe(seconds)

    def _reject(self, key: tuple[str, str], reason: str, schema: Schema, level: Level, started: float) -> Response:
        rkey = (*key, reason)
        self.rejected[rkey] = self.rejected.get(rkey, 0) + 1
        self._wait(key, "false", time.monotonic() - started)
        self._note_pressure()
        response = Response(429, TOO_MANY, "text/plain; charset=utf-8",
                            [("Retry-After", "1"), ("X-Content-Type-Options", "nosniff")])
        return self._headers(response, schema, level)

    @staticmethod
    def _headers(response: Response, schema: Schema, level: Level) -> Response:
        if schema.uid:
            response.headers.append((PL_UID_HEADER, level.uid))
            response.headers.append((FS_UID_HEADER, schema.uid))
        return response

    # ---------------------------------------------------------------- the standard tier's autoscaling
    def _note_pressure(self) -> None:
        if self.pressure_since is None:
            self.pressure_since = time.monotonic()

    def autoscale(self, now: float, cpu_busy: float = 0.0) -> None:
        """Called every second: grow after queues stayed busy for scale_up_delay, shrink after long calm.

        Seats are concurrency, not CPU: when the event loop is already saturated, more seats would only
        let more work in at once and slow everyone (a flood would push out leader election), so the
        tier grows only while the process has CPU to spare."""
        tier = self.tier
        self.cpu_busy = cpu_busy
        busy = bool(self.waiting_levels)
        if not busy and self.pressure_since is not None and now - self.pressure_since > 1.0 \
                and not self._recent_rejections():
            self.pressure_since = None
        if busy or self.pressure_since is not None:
            self.calm_since = now
        if not tier.adaptive:
            return
        if self.pressure_since is not None and now - self.pressure_since >= tier.scale_up_delay \
                and tier.seats < tier.max_seats and cpu_busy < CPU_SATURATED:
            old = tier.seats
            tier.seats = min(tier.max_seats, tier.seats * 2)
            delay = now - self.pressure_since
            tier.events.append(ScaleEvent(time.time(), old, tier.seats, delay))
            log.info("standard tier: queues stayed busy for %.1fs; seats %d -> %d", delay, old, tier.seats)
            self.pressure_since = now  # the next step needs its own sustained pressure
            self.apply_seats()
        elif now - self.calm_since >= tier.scale_down_after and tier.seats > tier.min_seats \
                and self.peak_seats < tier.seats // 4:
            old = tier.seats
            tier.seats = max(tier.min_seats, tier.seats // 2)
            tier.events.append(ScaleEvent(time.time(), old, tier.seats, 0.0))
            log.info("standard tier: calm for %.0fs; seats %d -> %d", now - self.calm_since, old, tier.seats)
            self.calm_since = now
            self.apply_seats()
        self.peak_seats = 0

    def _recent_rejections(self) -> bool:
        total = sum(self.rejected.values())
        changed = total != self.rejections_seen
        self.rejections_seen = total
        return changed

    # ---------------------------------------------------------------- background work
    async def run(self, registry: Any) -> None:
        """Keep configuration in step with the stored objects, object counts fresh, and the tier scaled."""
        await asyncio.gather(self._config_loop(registry), self._count_loop(registry), self._tier_loop())

    async def _tier_loop(self) -> None:
        wall, cpu = time.monotonic(), time.thread_time()  # this runs on the event loop thread
        while True:
            await asyncio.sleep(1.0)
            now, now_cpu = time.monotonic(), time.thread_time()
            self.autoscale(now, (now_cpu - cpu) / max(1e-3, now - wall))
            wall, cpu = now, now_cpu

    async def _count_loop(self, registry: Any) -> None:
        while True:
            for s in list(registry.strategies.values()):
                if s.create_handler is not None:
                    continue
                try:
                    self.object_counts[s.plural] = await registry.backend_for(s).count(s.prefix)
                except Exception:  # a backend hiccup only delays the estimate
                    log.debug("counting %s failed", s.plural, exc_info=True)
            await asyncio.sleep(1.0)  # counts are bisections in the store: cheap

    async def _config_loop(self, registry: Any) -> None:
        from ultraplane.apiserver.registry import ListOptions

        fs = registry.strategies[(GROUP, "v1", "flowschemas")]
        pl = registry.strategies[(GROUP, "v1", "prioritylevelconfigurations")]
        changed = asyncio.Event()

        async def watch(s: Strategy) -> None:
            while True:
                try:
                    stream = await registry.watch(s, "", "", ListOptions(), bookmarks=False, timeout=3600)
                    async for _chunk in stream:
                        changed.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("flowcontrol watch on %s failed; retrying", s.plural, exc_info=True)
                    await asyncio.sleep(1.0)

        watchers = [asyncio.ensure_future(watch(fs)), asyncio.ensure_future(watch(pl))]
        try:
            while True:
                await changed.wait()
                changed.clear()
                await asyncio.sleep(0.05)  # let a burst of events settle
                try:
                    schemas = (await registry.list(fs, "", ListOptions()))["items"]
                    levels = (await registry.list(pl, "", ListOptions()))["items"]
                    self.configure(schemas, levels)
                    await self._update_dangling(registry, fs, schemas, {lv["metadata"]["name"] for lv in levels})
                except Exception:
                    log.warning("flowcontrol configuration reload failed", exc_info=True)
        finally:
            for task in watchers:
                task.cancel()

    async def _update_dangling(self, registry: Any, fs: Strategy, schemas: list[Obj], levels: set[str]) -> None:
        """kube's APF controller keeps each FlowSchema's Dangling condition (the MISSINGPL column)."""
        from ultraplane.apiserver.errors import ApiError
        from ultraplane.apiserver.registry import WriteOptions, now_rfc3339

        for obj in schemas:
            level = (obj.get("spec") or {}).get("priorityLevelConfiguration", {}).get("name", "")
            found = level in levels
            status, reason = ("False", "Found") if found else ("True", "NotFound")
            message = (f'This FlowSchema references the PriorityLevelConfiguration object named "{level}" and it '
                       f'exists' if found else f'This FlowSchema references the PriorityLevelConfiguration object '
                       f'named "{level}" but there is no such object')
            conditions = (obj.get("status") or {}).get("conditions") or []
            current = next((c for c in conditions if c.get("type") == "Dangling"), None)
            if current is not None and current.get("status") == status and current.get("message") == message:
                continue
            cond = {"type": "Dangling", "status": status, "lastTransitionTime": now_rfc3339(), "reason": reason,
                    "message": message}
            obj["status"] = {"conditions": [*(c for c in conditions if c.get("type") != "Dangling"), cond]}
            try:
                await registry.update(fs, "", obj["metadata"]["name"], obj, WriteOptions(field_manager="api-priority-"
                                      "and-fairness-config-consumer-v1"), subresource="status")
            except ApiError as exc:
                log.debug("updating the Dangling condition of %s: %s", obj["metadata"]["name"], exc)

    # ---------------------------------------------------------------- metrics
    def collect(self) -> Iterator[Any]:
        executing = GaugeMetricFamily("apiserver_flowcontrol_current_executing_requests",
                                      "Number of requests in initial (for a WATCH) or any (for a non-WATCH) execution "
                                      "stage in the API Priority and Fairness subsystem",
                                      labels=["flow_schema", "priority_level"])
        for (pl, fs), n in sorted(self.executing.items()):
            executing.add_metric([fs, pl], n)
        yield executing
        inqueue = GaugeMetricFamily("apiserver_flowcontrol_current_inqueue_requests",
                                    "Number of requests currently pending in queues of the API Priority and Fairness "
                                    "subsystem", labels=["flow_schema", "priority_level"])
        for (pl, fs), n in sorted(self.inqueue.items()):
            inqueue.add_metric([fs, pl], n)
        yield inqueue
        rejected = CounterMetricFamily("apiserver_flowcontrol_rejected_requests",
                                       "Number of requests rejected by API Priority and Fairness subsystem",
                                       labels=["flow_schema", "priority_level", "reason"])
        for (pl, fs, reason), n in sorted(self.rejected.items()):
            rejected.add_metric([fs, pl, reason], n)
        yield rejected
        dispatched = CounterMetricFamily("apiserver_flowcontrol_dispatched_requests",
                                         "Number of requests executed by API Priority and Fairness subsystem",
                                         labels=["flow_schema", "priority_level"])
        for (pl, fs), n in sorted(self.dispatched.items()):
            dispatched.add_metric([fs, pl], n)
        yield dispatched
        yield histogram_family("apiserver_flowcontrol_request_wait_duration_seconds",
                               "Length of time a request spent waiting in its queue",
                               ["execute", "flow_schema", "priority_level"], sorted(self.waits.items()))
        nominal = GaugeMetricFamily("apiserver_flowcontrol_nominal_limit_seats",
                                    "Nominal number of execution seats configured for each priority level",
                                    labels=["priority_level"])
        current = GaugeMetricFamily("apiserver_flowcontrol_current_limit_seats",
                                    "current derived number of execution seats available to each priority level",
                                    labels=["priority_level"])
        seats = GaugeMetricFamily("apiserver_flowcontrol_current_executing_seats",
                                  "Concurrency (number of seats) occupied by the currently executing requests in the "
                                  "API Priority and Fairness subsystem", labels=["priority_level"])
        for name, level in sorted(self.levels.items()):
            nominal.add_metric([name], level.nominal)
            current.add_metric([name], min(level.ceiling, level.guaranteed + self.pool) if not level.exempt else 0)
            seats.add_metric([name], level.executing)
        yield nominal
        yield current
        yield seats
        tier = GaugeMetricFamily("ultraplane_apiserver_tier_seats", "Execution seats of this API server's capacity "
                                 "tier", labels=["tier"])
        tier.add_metric([self.tier.name], self.tier.seats)
        yield tier
        quota = GaugeMetricFamily("ultraplane_apiserver_tier_database_quota_bytes", "Database quota of the tier",
                                  labels=["tier"])
        quota.add_metric([self.tier.name], self.tier.quota_bytes)
        yield quota
        scale_ups = CounterMetricFamily("ultraplane_apiserver_tier_scale_ups", "Times the standard tier added seats",
                                        labels=["tier"])
        scale_ups.add_metric([self.tier.name], sum(1 for e in self.tier.events if e.seats_to > e.seats_from))
        yield scale_ups
        busy = GaugeMetricFamily("ultraplane_apiserver_event_loop_busy_ratio", "Share of one core the API "
                                 "server's event loop used in the last second (the standard tier grows only below "
                                 f"{CPU_SATURATED})")
        busy.add_metric([], self.cpu_busy)
        yield busy
        delay = GaugeMetricFamily("ultraplane_apiserver_tier_last_scale_up_delay_seconds",
                                  "Seconds requests queued before the last scale-up took effect", labels=["tier"])
        ups = [e for e in self.tier.events if e.seats_to > e.seats_from]
        delay.add_metric([self.tier.name], ups[-1].delay if ups else 0.0)
        yield delay


def _placeholder_schema(name: str) -> Schema:
    return Schema(name, "", name, 10000, "", [])


BOOTSTRAP_SCHEMA = _placeholder_schema("bootstrap")
BOOTSTRAP_LEVEL = Level({"metadata": {"name": "exempt"}, "spec": {"type": "Exempt"}})
CATCH_ALL_SCHEMA = _placeholder_schema("catch-all")


async def ensure_bootstrap(registry: Any) -> None:
    """Create the mandatory and suggested objects that are missing (kube's APF bootstrap controller)."""
    from ultraplane.apiserver.errors import ApiError
    from ultraplane.apiserver.registry import WriteOptions

    levels, schemas = bootstrap_objects()
    wo = WriteOptions(field_manager="api-priority-and-fairness-config-producer-v1")
    for plural, objects in (("prioritylevelconfigurations", levels), ("flowschemas", schemas)):
        s = registry.strategies[(GROUP, "v1", plural)]
        for obj in objects:
            try:
                await registry.create(s, "", obj, wo)
            except ApiError as exc:
                if exc.code != 409:
                    raise
