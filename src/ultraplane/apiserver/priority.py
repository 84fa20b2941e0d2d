"""kube-apiserver's Priority admission plugin, PriorityClass validation and the system priority classes.

* Pod CREATE: ``spec.priorityClassName`` resolves to the class's ``value`` (``spec.priority``) and
  ``preemptionPolicy``; no class named takes the globalDefault class (lowest value if a race left
  several), else priority 0 and PreemptLowerPriority. A missing class or a user-set priority or policy
  that disagrees with the class is kube's admission 403.
* PriorityClass CREATE/UPDATE: only one globalDefault (403); the strategy's validation refuses values
  above 1000000000, reserves ``system-`` names for the two built-in classes and keeps ``value`` and
  ``preemptionPolicy`` immutable (422), as pkg/apis/scheduling/validation does.
* ``bootstrap``: the ``system-cluster-critical`` and ``system-node-critical`` classes, created at
  startup like kube's scheduling/bootstrap-system-priority-classes post-start hook.

Pod creates read the classes from ``ClassIndex``, kept current from the watch cache (kube's plugin
reads a shared informer's lister), so admitting a pod costs no store read. For a moment after a class
is written through this server, pods read the store instead, so a client that creates a class and
then a pod always sees its class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from ultraplane.apiserver import errors, validation
from ultraplane.apiserver.rbac import current_user
from ultraplane.apiserver.registry import ListOptions, Obj, Registry, Strategy, WriteOptions
from ultraplane.apiserver.validation import go_quote
from ultraplane.apiserver.watchcache import follow

log = logging.getLogger("ultraplane.apiserver.priority")

GROUP = "scheduling.k8s.io"
HIGHEST_USER_DEFINABLE_PRIORITY = 1000000000
SYSTEM_CRITICAL_PRIORITY = 2 * HIGHEST_USER_DEFINABLE_PRIORITY
SYSTEM_PREFIX = "system-"
PREEMPT_LOWER = "PreemptLowerPriority"
POLICIES = ["Never", PREEMPT_LOWER]
# pkg/apis/scheduling/v1/helpers.go SystemPriorityClasses()
SYSTEM_CLASSES: dict[str, tuple[int, str]] = {
    "system-node-critical": (SYSTEM_CRITICAL_PRIORITY + 1000,
                             "Used for system critical pods that must not be moved from their current node."),
    "system-cluster-critical": (SYSTEM_CRITICAL_PRIORITY, "Used for system critical pods that must run in the "
                                "cluster, but can be moved to another node if necessary."),
}


def _forbidden(plural: str, name: str, why: str, group: str = "") -> errors.ApiError:
    return errors.forbidden(f"{errors.qualified(group, plural)} {go_quote(name)} is forbidden: {why}",
                            group, plural, name)


def priorityclass_defaults(obj: Obj) -> None:
    if not obj.get("preemptionPolicy"):  # SetDefaults_PriorityClass
        obj["preemptionPolicy"] = PREEMPT_LOWER


def priorityclass_validate(obj: Obj, old: Obj | None) -> list[validation.Cause]:
    name = (obj.get("metadata") or {}).get("name", "")
    value = obj.get("value")
    causes: list[validation.Cause] = []
    if not isinstance(value, int) or isinstance(value, bool):
        causes.append(validation.required("value"))
        value = 0
    if name.startswith(SYSTEM_PREFIX):
        known = SYSTEM_CLASSES.get(name)
        if known is None:
            why = f"{name} is not a known system priority class"
        elif known[0] != value:
            why = f"value of {name} PriorityClass must be {known[0]}"
        elif obj.get("globalDefault"):
            why = f"globalDefault of {name} PriorityClass must be false"
        else:
            why = ""
        if why:
            causes.append(validation.forbidden("metadata.name", f"priority class names with '{SYSTEM_PREFIX}' "
                                               f"prefix are reserved for system use only. error: {why}"))
    elif value > HIGHEST_USER_DEFINABLE_PRIORITY:
        causes.append(validation.forbidden(
            "value", f"maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"))
    policy = obj.get("preemptionPolicy")
    if policy not in POLICIES:
        causes.append(validation.not_supported("preemptionPolicy", policy, POLICIES))
    if old is not None:
        if old.get("value") != obj.get("value"):
            causes.append(validation.forbidden("value", "may not be changed in an update."))
        if old.get("preemptionPolicy") != policy:
            causes.append(validation.invalid("preemptionPolicy", policy, "field is immutable"))
    return causes


def lowest_default(classes: Any) -> Obj | None:
    """The globalDefault class; the lowest value wins if a race left several (kube's getDefaultPriorityClass)."""
    best: Obj | None = None
    for pc in classes:
        if pc.get("globalDefault") and (best is None or int(pc.get("value", 0)) < int(best.get("value", 0))):
            best = pc
    return best


class ClassIndex:
    """Every PriorityClass by name, loaded once and then kept current from the watch cache (as rbac.py's
    RbacSync and nodeauthz.py's GraphSync keep theirs). The default class is remembered until a class
    changes, so a pod create does a dict lookup at most."""

    def __init__(self, registry: Registry, strategy: Strategy) -> None:
        self.registry = registry
        self.strategy = strategy
        self.by_name: dict[str, Obj] = {}
        self.loaded = False
        self._default: tuple[Obj | None] | None = None  # None: to be recomputed

    def get(self, name: str) -> Obj | None:
        return self.by_name.get(name)

    def default(self) -> Obj | None:
        if self._default is None:
            self._default = (lowest_default(self.by_name.values()),)
        return self._default[0]

    def apply(self, obj: Obj | None, deleted: bool) -> None:
        if obj is None:
            return
        name = str((obj.get("metadata") or {}).get("name") or "")
        if deleted:
            self.by_name.pop(name, None)
        else:
            self.by_name[name] = obj
        self._default = None

    async def load(self) -> int:
        """List the classes and replace the index in one step; returns the list's revision."""
        listed = await self.registry.list(self.strategy, "", ListOptions())
        self.by_name = {str(pc["metadata"]["name"]): pc for pc in listed["items"]}
        self._default = None
        self.loaded = True
        return int(listed["metadata"]["resourceVersion"])

    async def run(self, after: int) -> None:
        """Apply every priorityclasses event after `after`; a cut subscription or lost history re-lists."""
        current_user.set(None)
        s = self.strategy
        await follow(self.registry.cache_for(s), s.prefix, after, lambda ev: self.apply(ev.obj(), ev.deleted),
                     self.load, "priority classes")


class PriorityAdmission:
    # after a class is written through this server, pod creates read the store for this long: the
    # watch cache may not have delivered the write yet, and a client creating a class then a pod
    # must see it
    FRESH_READ_S = 2.0

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.classes = registry.strategies[(GROUP, "v1", "priorityclasses")]
        self.index = ClassIndex(registry, self.classes)
        self.read_store_until = 0.0
        # the store-read path lists the classes: decode each stored version once
        self._decoded: dict[bytes, tuple[int, Obj]] = {}

    async def start(self) -> asyncio.Task[None]:
        """Load the index before serving; returns the task that keeps it current."""
        revision = await self.index.load()
        return asyncio.ensure_future(self.index.run(revision))

    def _from_index(self) -> bool:
        return self.index.loaded and time.monotonic() >= self.read_store_until

    async def _get(self, name: str) -> Obj | None:
        key = self.classes.key("", name)
        _, stored = await self.registry.backend_for(self.classes).get(key)
        return None if stored is None else self.registry.decode(self.classes, stored.value, stored.mod_revision, key)

    async def default_class(self) -> Obj | None:
        """The globalDefault class as the store has it now (class writes; pods use the index)."""
        page = await self.registry.backend_for(self.classes).list(self.classes.collection_prefix(""))
        if len(self._decoded) > 4 * len(page.items) + 64:
            self._decoded.clear()
        decoded = []
        for item in page.items:
            cached = self._decoded.get(item.key)
            if cached is None or cached[0] != item.mod_revision:
                cached = self._decoded[item.key] = (
                    item.mod_revision, self.registry.decode(self.classes, item.value, item.mod_revision, item.key))
            decoded.append(cached[1])
        return lowest_default(decoded)

    async def admit_pod(self, pod: Obj) -> None:
        """Mutating admission on pod create (registry.admission["pods"])."""
        spec = pod.setdefault("spec", {})
        name = pod["metadata"].get("name", "")
        class_name = spec.get("priorityClassName") or ""
        indexed = self._from_index()
        if class_name:
            # a class the index misses may be newer than the watch cache: the store has the last word
            pc = self.index.get(class_name) if indexed else None
            if pc is None:
                pc = await self._get(class_name)
            if pc is None:
                raise _forbidden("pods", name, f"no PriorityClass with name {class_name} was found")
        else:
            pc = self.index.default() if indexed else await self.default_class()
            if pc is not None:
                spec["priorityClassName"] = pc["metadata"]["name"]
        priority = int(pc.get("value", 0)) if pc is not None else 0
        policy = (pc.get("preemptionPolicy") if pc is not None else None) or PREEMPT_LOWER
        if spec.get("priority") is not None and spec["priority"] != priority:
            raise _forbidden("pods", name, f"the integer value of priority ({spec['priority']}) must not be provided "
                             f"in pod spec; priority admission controller computed {priority} from the given "
                             f"PriorityClass name")
        if spec.get("preemptionPolicy") and spec["preemptionPolicy"] != policy:
            raise _forbidden("pods", name, f"the string value of PreemptionPolicy ({spec['preemptionPolicy']}) must "
                             f"not be provided in pod spec; priority admission controller computed {policy} from "
                             f"the given PriorityClass name")
        spec["priority"] = priority
        spec["preemptionPolicy"] = policy

    def keep_on_update(self, op: str, s: Strategy, namespace: str, name: str, subresource: str, new: Obj | None,
                       old: Obj | None) -> None:
        """Pod UPDATE: a body without priority or preemptionPolicy keeps the stored ones (kube's admitPod on
        update), instead of pod defaulting resetting them."""
        if op != "UPDATE" or subresource or s.plural != "pods" or s.group or new is None or old is None:
            return
        spec, stored = new.get("spec"), old.get("spec") or {}
        if isinstance(spec, dict):
            for field in ("priority", "preemptionPolicy"):
                if spec.get(field) is None and stored.get(field) is not None:
                    spec[field] = stored[field]

    def check_class(self, op: str, s: Strategy, namespace: str, name: str, subresource: str, new: Obj | None,
                    old: Obj | None) -> Awaitable[None] | None:
        """Validating admission (registry.write_admission): one globalDefault class at most."""
        if s is not self.classes:
            return None
        self.read_store_until = time.monotonic() + self.FRESH_READ_S
        if op not in ("CREATE", "UPDATE") or subresource or not (new or {}).get("globalDefault"):
            return None
        return self._only_one_default(op, name)

    async def _only_one_default(self, op: str, name: str) -> None:
        current = await self.default_class()
        if current is not None and (op == "CREATE" or current["metadata"]["name"] != name):
            raise _forbidden("priorityclasses", name, f"PriorityClass {current['metadata']['name']} is already "
                             f"marked as default. Only one default can exist", GROUP)


def install(registry: Registry) -> PriorityAdmission:
    admission = PriorityAdmission(registry)
    admission.classes.defaults = priorityclass_defaults
    admission.classes.validate = priorityclass_validate
    registry.admission["pods"] = admission.admit_pod
    registry.write_admission.append(admission.check_class)
    registry.write_admission.append(admission.keep_on_update)
    return admission


async def bootstrap(registry: Registry) -> None:
    """Create the system priority classes that are missing (kube never overwrites an existing one)."""
    classes = registry.strategies[(GROUP, "v1", "priorityclasses")]
    wo = WriteOptions(field_manager="kube-apiserver")
    for name, (value, description) in SYSTEM_CLASSES.items():
        body = {"apiVersion": f"{GROUP}/v1", "kind": "PriorityClass", "metadata": {"name": name},
                "value": value, "description": description, "preemptionPolicy": PREEMPT_LOWER}
        try:
            await registry.create(classes, "", body, wo)
        except errors.ApiError as exc:
            if exc.code != 409:
                raise
