"""Keeping RBAC running inside the API server: the authorizer's index, bootstrap policy, aggregation.

- ``RbacSync`` loads the four RBAC resources once and then applies every watch-cache event to the
  ``RbacAuthorizer`` index (no store reads on the request path). A cut subscription re-lists.
- ``reconcile_bootstrap_policy`` is kube's rbac/bootstrap-roles post-start hook: missing default
  objects are created; existing ones annotated ``rbac.authorization.kubernetes.io/autoupdate: "true"``
  get the missing rules, subjects, labels and annotations added back (nothing is removed).
- ``aggregate`` is kube's clusterrole-aggregation controller: a ClusterRole with an aggregationRule
  gets the rules of every ClusterRole its selectors match (sorted by name, duplicates dropped).
"""

from __future__ import annotations

import asyncio
import copy
import logging

from ultraplane.apiserver import errors, rbac_policy
from ultraplane.apiserver.rbac import GROUP, RbacAuthorizer, current_user
from ultraplane.apiserver.registry import ListOptions, Obj, Registry, Strategy, WriteOptions
from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.apiserver.watchcache import CachedEvent, follow

log = logging.getLogger("ultraplane.apiserver.rbac")

AGGREGATION_MANAGER = "clusterrole-aggregation-controller"


class RbacSync:
    def __init__(self, registry: Registry, authz: RbacAuthorizer) -> None:
        self.registry = registry
        self.authz = authz
        self.kinds = {plural: registry.strategies[(GROUP, "v1", plural)]
                      for plural in ("clusterroles", "roles", "clusterrolebindings", "rolebindings")}
        self.cluster_role_objs: dict[str, Obj] = {}  # for aggregation: labels, aggregationRule, rules
        self.aggregation_due = asyncio.Event()

    def apply(self, plural: str, obj: Obj, deleted: bool) -> None:
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "") or ""
        value = None if deleted else obj
        if plural == "clusterroles":
            if value is None:
                self.cluster_role_objs.pop(name, None)
            else:
                self.cluster_role_objs[name] = value
            self.authz.set_cluster_role(name, value)
            self.aggregation_due.set()
        elif plural == "roles":
            self.authz.set_role(namespace, name, value)
        elif plural == "clusterrolebindings":
            self.authz.set_cluster_binding(name, value)
        else:
            self.authz.set_binding(namespace, name, value)

    async def load(self) -> dict[str, int]:
        """The current objects into the index; returns the revision each list was served at."""
        revisions = {}
        for plural, s in self.kinds.items():
            revisions[plural] = await self._load_one(plural, s)
        return revisions

    async def _load_one(self, plural: str, s: Strategy) -> int:
        listed = await self.registry.list(s, "", ListOptions())
        for item in listed["items"]:
            self.apply(plural, item, False)
        return int(listed["metadata"]["resourceVersion"])

    async def follow(self, plural: str, after: int) -> None:
        """Apply the watch cache's events for one resource from ``after`` on, forever."""
        s = self.kinds[plural]

        def apply(ev: CachedEvent) -> None:
            obj = ev.obj()
            if obj is not None:
                self.apply(plural, obj, ev.deleted)

        await follow(self.registry.cache_for(s), s.prefix, after, apply, lambda: self._relist(plural, s),
                     f"RBAC {plural}")

    async def _relist(self, plural: str, s: Strategy) -> int:
        listed = await self.registry.list(s, "", ListOptions())
        seen = set()
        for item in listed["items"]:
            meta = item["metadata"]
            seen.add((meta.get("namespace", ""), meta["name"]))
            self.apply(plural, item, False)
        for namespace, name in self._known(plural) - seen:
            self.apply(plural, {"metadata": {"name": name, "namespace": namespace}}, True)
        return int(listed["metadata"]["resourceVersion"])

    def _known(self, plural: str) -> set[tuple[str, str]]:
        a = self.authz
        if plural == "clusterroles":
            return {("", n) for n in a.cluster_roles}
        if plural == "roles":
            return set(a.roles)
        if plural == "clusterrolebindings":
            return {("", n) for n in a.cluster_bindings}
        return set(a.bindings)

    async def run(self, revisions: dict[str, int]) -> None:
        current_user.set(None)  # background writes are the API server's own
        await asyncio.gather(*(self.follow(p, r) for p, r in revisions.items()), self.aggregate_forever())

    # ---------------------------------------------------------------- aggregation
    def aggregated_rules(self, role: Obj) -> list[Obj] | None:
        """The rules an aggregating ClusterRole should hold, or None when it has no aggregationRule."""
        rule = role.get("aggregationRule")
        if rule is None:
            return None
        selectors = []
        for selector in (rule or {}).get("clusterRoleSelectors") or []:
            try:
                selectors.append(label_selector_from_dict(selector))
            except SelectorError:
                continue
        name = role["metadata"]["name"]
        rules: list[Obj] = []
        for other_name in sorted(self.cluster_role_objs):
            if other_name == name:
                continue
            labels = (self.cluster_role_objs[other_name].get("metadata") or {}).get("labels") or {}
            if any(sel.matches(labels) for sel in selectors):
                for r in self.cluster_role_objs[other_name].get("rules") or []:
                    if r not in rules:
                        rules.append(r)
        return rules

    async def aggregate_once(self) -> None:
        """Bring every aggregating ClusterRole up to date; repeats while a pass changed something, so
        roles aggregating other aggregated roles (view -> edit -> admin) settle in one call."""
        s = self.kinds["clusterroles"]
        for _pass in range(8):
            changed = False
            for name, role in list(self.cluster_role_objs.items()):
                wanted = self.aggregated_rules(role)
                if wanted is None or (role.get("rules") or []) == wanted:
                    continue

                def set_rules(current: Obj, wanted: list[Obj] = wanted) -> Obj:
                    current["rules"] = copy.deepcopy(wanted)
                    return current

                try:
                    updated = await self.registry.guaranteed_update(
                        s, "", name, set_rules, WriteOptions(field_manager=AGGREGATION_MANAGER))
                except errors.ApiError as exc:
                    if exc.code != 404:
                        log.warning("aggregating clusterrole %s: %s", name, exc)
                    continue
                self.apply("clusterroles", updated, False)  # the watch event repeats it; fine
                changed = True
            if not changed:
                return

    async def aggregate_forever(self) -> None:
        while True:
            await self.aggregation_due.wait()
            self.aggregation_due.clear()
            await asyncio.sleep(0.02)  # let a burst of clusterrole events land first
            try:
                await self.aggregate_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("clusterrole aggregation failed", exc_info=True)


# ============================================================================ bootstrap policy
def _merge_missing(current: Obj, wanted: Obj) -> bool:
    """Add what ``wanted`` has and ``current`` lacks (kube's reconcile without removals); True if changed."""
    changed = False
    meta, wanted_meta = current.setdefault("metadata", {}), wanted["metadata"]
    for field in ("labels", "annotations"):
        have = meta.setdefault(field, {})
        for key, value in (wanted_meta.get(field) or {}).items():
            if key not in have:
                have[key] = value
                changed = True
    if "aggregationRule" in wanted:
        selectors = current.setdefault("aggregationRule", {}).setdefault("clusterRoleSelectors", [])
        for sel in wanted["aggregationRule"]["clusterRoleSelectors"]:
            if sel not in selectors:
                selectors.append(sel)
                changed = True
    elif "rules" in wanted:
        from ultraplane.apiserver.rbac import compile_rules, covers

        have_rules = current.setdefault("rules", [])
        for r in wanted["rules"]:
            missing = covers(compile_rules(have_rules), compile_rules([r]))
            if missing:
                have_rules.append(r)
                changed = True
    if "subjects" in wanted:
        subjects = current.setdefault("subjects", [])
        for subject in wanted["subjects"]:
            if subject not in subjects:
                subjects.append(subject)
                changed = True
    return changed


async def _ensure(registry: Registry, s: Strategy, wanted: Obj, wo: WriteOptions) -> None:
    meta = wanted["metadata"]
    namespace, name = meta.get("namespace", ""), meta["name"]
    try:
        current = await registry.get(s, namespace, name)
    except errors.ApiError as exc:
        if exc.code != 404:
            raise
        try:
            await registry.create(s, namespace, copy.deepcopy(wanted), wo)
        except errors.ApiError as create_exc:
            if create_exc.code != 409:  # another API server created it meanwhile
                raise
        return
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    if annotations.get("rbac.authorization.kubernetes.io/autoupdate", "true") != "true":
        return  # the cluster's owner took this object over
    if "roleRef" in wanted and current.get("roleRef") != wanted["roleRef"]:
        # roleRef is immutable: kube's reconciler deletes the binding and creates it again, keeping its subjects
        recreated = copy.deepcopy(wanted)
        recreated["subjects"] = list(current.get("subjects") or [])
        _merge_missing(recreated, wanted)
        old_meta, new_meta = current["metadata"], wanted["metadata"]
        recreated["metadata"] = {**new_meta,
                                 "labels": {**(old_meta.get("labels") or {}), **new_meta["labels"]},
                                 "annotations": {**(old_meta.get("annotations") or {}), **new_meta["annotations"]}}
        if not recreated["subjects"]:
            del recreated["subjects"]
        await registry.delete(s, namespace, name, {}, wo)
        await registry.create(s, namespace, recreated, wo)
        return
    if not _merge_missing(copy.deepcopy(current), wanted):
        return

    def reconcile(obj: Obj) -> Obj:
        _merge_missing(obj, wanted)
        return obj

    await registry.guaranteed_update(s, namespace, name, reconcile, wo)


async def reconcile_bootstrap_policy(registry: Registry) -> None:
    wo = WriteOptions(field_manager="kube-apiserver")
    kinds: dict[str, Strategy] = {p: registry.strategies[(GROUP, "v1", p)]
                                  for p in ("clusterroles", "clusterrolebindings", "roles", "rolebindings")}
    batches: list[tuple[str, list[Obj]]] = [
        ("clusterroles", rbac_policy.cluster_roles()), ("clusterrolebindings", rbac_policy.cluster_role_bindings()),
        ("roles", rbac_policy.namespace_roles()), ("rolebindings", rbac_policy.namespace_role_bindings())]
    for plural, objects in batches:
        await asyncio.gather(*(_ensure(registry, kinds[plural], obj, wo) for obj in objects))


async def start_rbac(registry: Registry, authz: RbacAuthorizer) -> asyncio.Task[None]:
    """Bootstrap policy and the loaded index, before the first request; returns the follower task."""
    current_user.set(None)
    await reconcile_bootstrap_policy(registry)
    sync = RbacSync(registry, authz)
    revisions = await sync.load()
    await sync.aggregate_once()  # aggregated roles are complete before the first request
    return asyncio.ensure_future(sync.run(revisions))
