"""RBAC authorization: kube's rbac.authorization.k8s.io/v1 evaluation over an in-memory index.

``RbacAuthorizer`` keeps every Role, ClusterRole, RoleBinding and ClusterRoleBinding in memory,
loaded once and then kept current from the watch cache (``RbacSync``, rbac_controller.py), with
bindings indexed by subject: a request looks up only the bindings naming its user or one of its
groups, never the store. Decisions are memoized per (user, groups, attributes) until the next RBAC change.

With ``node`` installed (nodeauthz.py) the chain is kube's ``--authorization-mode=Node,RBAC``: kubelets'
requests go to the Node authorizer first, and what it does not allow falls through to RBAC.

Rule matching, the allow reason (``RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to
User "z"``), ``RulesFor`` (SelfSubjectRulesReview, escalation checks) and ``Covers`` follow
kube's ``pkg/registry/rbac/validation`` and ``plugin/pkg/auth/authorizer/rbac``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ultraplane.apiserver import errors

GROUP = "rbac.authorization.k8s.io"
SUPERUSER_GROUP = "system:masters"
SA_PREFIX = "system:serviceaccount:"
NODE_USER_PREFIX = "system:node:"  # with NODES_GROUP: users the Node authorizer (nodeauthz.py) decides for first
NODES_GROUP = "system:nodes"
DECISION_CACHE_LIMIT = 50_000  # memoized decisions; the memo starts over when full

Obj = dict[str, Any]

# the user of the request being served (set by ApiServer.authorize), for the escalation checks that run
# inside the registry's create/update path
current_user: contextvars.ContextVar[Any] = contextvars.ContextVar("ultraplane_rbac_user", default=None)


@dataclass(frozen=True)
class Attributes:
    """kube's authorizer.Attributes for one request."""

    user: str
    groups: tuple[str, ...]
    verb: str
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True
    # a list/watch's fieldSelector; only the Node authorizer reads it, so it stays out of the RBAC memo's key
    field_selector: str = field(default="", compare=False)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


# ============================================================================ rules
@dataclass(frozen=True)
class Rule:
    """One PolicyRule, with sets for matching and the original lists for display."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    _verbs: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _groups: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _resources: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _any_sub: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # "x" for each "*/x"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_verbs", frozenset(self.verbs))
        object.__setattr__(self, "_groups", frozenset(self.api_groups))
        object.__setattr__(self, "_resources", frozenset(self.resources))
        object.__setattr__(self, "_any_sub", frozenset(r[2:] for r in self.resources if r.startswith("*/")))

    @classmethod
    def from_obj(cls, rule: Obj) -> Rule:
        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in rule.get(key) or ())

        return cls(strings("verbs"), strings("apiGroups"), strings("resources"), strings("resourceNames"),
                   strings("nonResourceURLs"))

    def allows(self, a: Attributes) -> bool:
        """kube's RuleAllows."""
        if "*" not in self._verbs and a.verb not in self._verbs:
            return False
        if not a.resource_request:
            return url_matches(self.urls, a.path)
        if "*" not in self._groups and a.api_group not in self._groups:
            return False
        resources = self._resources
        if "*" not in resources:  # kube's ResourceMatches, on sets
            if a.subresource:
                if f"{a.resource}/{a.subresource}" not in resources and a.subresource not in self._any_sub:
                    return False
            elif a.resource not in resources:
                return False
        return not self.resource_names or a.name in self.resource_names


def url_matches(urls: Sequence[str], path: str) -> bool:
    for url in urls:
        if url == "*" or url == path:
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def compile_rules(rules: Iterable[Obj] | None) -> tuple[Rule, ...]:
    return tuple(Rule.from_obj(r) for r in rules or () if isinstance(r, dict))


# ---------------------------------------------------------------------------- covers (escalation)
def breakdown(rule: Rule) -> list[Rule]:
    """kube's BreakdownRule: one rule per (group, resource, verb[, name]) and per (url, verb)."""
    out = []
    for group in rule.api_groups:
        for resource in rule.resources:
            for verb in rule.verbs:
                if rule.resource_names:
                    out.extend(Rule((verb,), (group,), (resource,), (name,)) for name in rule.resource_names)
                else:
                    out.append(Rule((verb,), (group,), (resource,)))
    for url in rule.urls:
        for verb in rule.verbs:
            out.append(Rule((verb,), urls=(url,)))
    return out


def _resources_cover(owner: Sequence[str], wanted: Sequence[str]) -> bool:
    if "*" in owner:
        return True
    for path in wanted:
        if path in owner:
            continue
        if "/" not in path or "*/" + path.split("/", 1)[1] not in owner:
            return False
    return True


def _urls_cover(owner: Sequence[str], wanted: Sequence[str]) -> bool:
    for path in wanted:
        if not any(o == path or (o.endswith("*") and path.startswith(o.rstrip("*"))) for o in owner):
            return False
    return True


def rule_covers(owner: Rule, sub: Rule) -> bool:
    """kube's ruleCovers: does owner grant everything sub grants?"""
    if "*" not in owner._verbs and not set(sub.verbs) <= owner._verbs:
        return False
    if "*" not in owner._groups and not set(sub.api_groups) <= owner._groups:
        return False
    if not _resources_cover(owner.resources, sub.resources) or not _urls_cover(owner.urls, sub.urls):
        return False
    if not sub.resource_names:
        return not owner.resource_names
    return not owner.resource_names or set(sub.resource_names) <= set(owner.resource_names)


def covers(owner_rules: Sequence[Rule], requested: Iterable[Rule]) -> list[Rule]:
    """The parts of ``requested`` that ``owner_rules`` do not grant (kube's Covers)."""
    missing = []
    for rule in requested:
        for sub in breakdown(rule):
            if not any(rule_covers(owner, sub) for owner in owner_rules):
                missing.append(sub)
    return missing


def compact(rules: list[Rule]) -> list[Rule]:
    """kube's CompactRules: simple rules on the same (group, resource, name) merge their verbs."""
    merged: dict[tuple[str, str, str | None], list[str]] = {}
    out: list[Rule] = []
    for r in rules:
        if len(r.resource_names) > 1 or r.urls or len(r.api_groups) != 1 or len(r.resources) != 1:
            out.append(r)
            continue
        key = (r.api_groups[0], r.resources[0], r.resource_names[0] if r.resource_names else None)
        merged.setdefault(key, []).extend(r.verbs)
    for (group, resource, name), verbs in merged.items():
        out.append(Rule(tuple(verbs), (group,), (resource,), (name,) if name is not None else ()))
    return out


def go_quoted_list(values: Sequence[str]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    from ultraplane.apiserver.validation import go_quote

    return "[" + " ".join(go_quote(v) for v in values) + "]"


def compact_string(rule: Rule) -> str:
    """kube's rbacv1helpers.CompactString, as escalation errors print missing rules."""
    parts = []
    if rule.api_groups:
        parts.append(f"APIGroups:{go_quoted_list(rule.api_groups)}")
    if rule.resources:
        parts.append(f"Resources:{go_quoted_list(rule.resources)}")
    if rule.urls:
        parts.append(f"NonResourceURLs:{go_quoted_list(rule.urls)}")
    if rule.resource_names:
        parts.append(f"ResourceNames:{go_quoted_list(rule.resource_names)}")
    if rule.verbs:
        parts.append(f"Verbs:{go_quoted_list(rule.verbs)}")
    return "{" + ", ".join(parts) + "}"


# ============================================================================ bindings
@dataclass(frozen=True)
class Binding:
    name: str
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: tuple[Obj, ...]

    @classmethod
    def from_obj(cls, obj: Obj) -> Binding:
        ref = obj.get("roleRef") or {}
        meta = obj.get("metadata") or {}
        subjects = tuple(s for s in obj.get("subjects") or () if isinstance(s, dict))
        return cls(meta.get("name", ""), meta.get("namespace", "") or "", str(ref.get("kind", "")),
                   str(ref.get("name", "")), subjects)

    def subject_keys(self) -> set[tuple[str, str]]:
        """("u", user name) / ("g", group) for every subject; service accounts as their user names."""
        keys = set()
        for s in self.subjects:
            kind, name = s.get("kind"), str(s.get("name", ""))
            if kind == "User":
                keys.add(("u", name))
            elif kind == "Group":
                keys.add(("g", name))
            elif kind == "ServiceAccount":
                ns = s.get("namespace") or self.namespace
                if ns:
                    keys.add(("u", f"{SA_PREFIX}{ns}:{name}"))
        return keys

    def applying_subject(self, user: str, groups: Sequence[str]) -> Obj | None:
        """kube's appliesTo: the first subject naming this user (or one of its groups)."""
        for s in self.subjects:
            kind, name = s.get("kind"), s.get("name", "")
            if kind == "User" and name == user:
                return s
            if kind == "Group" and name in groups:
                return s
            if kind == "ServiceAccount":
                ns = s.get("namespace") or self.namespace
                if ns and user == f"{SA_PREFIX}{ns}:{name}":
                    return s
        return None

    def describe(self, subject: Obj) -> str:
        """kube's (cluster)RoleBindingDescriber: how an allow reason names this binding."""
        kind = subject.get("kind", "")
        if kind == "ServiceAccount":
            who = f'{kind} "{subject.get("name", "")}/{subject.get("namespace") or self.namespace}"'
        else:
            who = f'{kind} "{subject.get("name", "")}"'
        if self.namespace:
            return f'RoleBinding "{self.name}/{self.namespace}" of {self.role_kind} "{self.role_name}" to {who}'
        return f'ClusterRoleBinding "{self.name}" of {self.role_kind} "{self.role_name}" to {who}'


# ============================================================================ the authorizer
class RbacAuthorizer:
    """RBAC state in memory, indexed for request-time lookups."""

    def __init__(self) -> None:
        self.cluster_roles: dict[str, tuple[Rule, ...]] = {}
        self.roles: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self.cluster_bindings: dict[str, Binding] = {}
        self.bindings: dict[tuple[str, str], Binding] = {}
        # subject key -> names of the ClusterRoleBindings naming it
        self.cluster_by_subject: dict[tuple[str, str], set[str]] = {}
        # (namespace, subject key) -> names of that namespace's RoleBindings naming it
        self.ns_by_subject: dict[tuple[str, tuple[str, str]], set[str]] = {}
        self.decisions: dict[Attributes, Decision] = {}
        self.generation = 0  # bumped on every change
        self.node: Any = None  # nodeauthz.NodeAuthorizer, before RBAC as kube's --authorization-mode=Node,RBAC

    # ---------------------------------------------------------------- state changes
    def _touch(self) -> None:
        self.decisions.clear()
        self.generation += 1

    def set_cluster_role(self, name: str, obj: Obj | None) -> None:
        if obj is None:
            self.cluster_roles.pop(name, None)
        else:
            self.cluster_roles[name] = compile_rules(obj.get("rules"))
        self._touch()

    def set_role(self, namespace: str, name: str, obj: Obj | None) -> None:
        if obj is None:
            self.roles.pop((namespace, name), None)
        else:
            self.roles[(namespace, name)] = compile_rules(obj.get("rules"))
        self._touch()

    def set_cluster_binding(self, name: str, obj: Obj | None) -> None:
        old = self.cluster_bindings.pop(name, None)
        if old is not None:
            for key in old.subject_keys():
                names = self.cluster_by_subject.get(key)
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self.cluster_by_subject[key]
        if obj is not None:
            binding = Binding.from_obj(obj)
            self.cluster_bindings[name] = binding
            for key in binding.subject_keys():
                self.cluster_by_subject.setdefault(key, set()).add(name)
        self._touch()

    def set_binding(self, namespace: str, name: str, obj: Obj | None) -> None:
        old = self.bindings.pop((namespace, name), None)
        if old is not None:
            for key in old.subject_keys():
                names = self.ns_by_subject.get((namespace, key))
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self.ns_by_subject[(namespace, key)]
        if obj is not None:
            binding = Binding.from_obj(obj)
            self.bindings[(namespace, name)] = binding
            for key in binding.subject_keys():
                self.ns_by_subject.setdefault((namespace, key), set()).add(name)
        self._touch()

    # ---------------------------------------------------------------- lookups
    def _keys(self, user: str, groups: Sequence[str]) -> list[tuple[str, str]]:
        return [("u", user), *(("g", g) for g in groups)]

    def applicable(self, user: str, groups: Sequence[str], namespace: str) -> list[Binding]:
        """The bindings naming this user or a group of it: cluster-wide first, then the namespace's (by name)."""
        keys = self._keys(user, groups)
        names: set[str] = set()
        for key in keys:
            found = self.cluster_by_subject.get(key)
            if found:
                names |= found
        out = [self.cluster_bindings[n] for n in sorted(names)]
        if namespace:
            ns_names: set[str] = set()
            for key in keys:
                found = self.ns_by_subject.get((namespace, key))
                if found:
                    ns_names |= found
            out.extend(self.bindings[(namespace, n)] for n in sorted(ns_names))
        return out

    def role_rules(self, binding: Binding) -> tuple[Rule, ...] | None:
        """The rules a binding's roleRef points at, or None when the role does not exist."""
        if binding.role_kind == "ClusterRole":
            return self.cluster_roles.get(binding.role_name)
        if binding.role_kind == "Role" and binding.namespace:
            return self.roles.get((binding.namespace, binding.role_name))
        return None

    def _missing_role(self, binding: Binding) -> str:
        if binding.role_kind == "Role":
            return f'role.{GROUP} "{binding.role_name}" not found'
        return f'clusterrole.{GROUP} "{binding.role_name}" not found'

    # ---------------------------------------------------------------- decisions
    def authorize(self, a: Attributes) -> Decision:
        """kube's authorizer chain: the privileged group system:masters, the Node authorizer, then RBAC.

        A Node denial is kube's NoOpinion: RBAC still decides, and a refusal carries both reasons
        (kube's union authorizer joins them with a newline)."""
        if SUPERUSER_GROUP in a.groups:
            return Decision(True)
        node_reason = ""
        if self.node is not None and a.user.startswith(NODE_USER_PREFIX):
            verdict = self.node.authorize(a)
            if verdict is not None:
                if verdict.allowed:
                    return verdict
                node_reason = verdict.reason
        decision = self.decisions.get(a)
        if decision is None:
            decision = self._evaluate(a)
            if len(self.decisions) >= DECISION_CACHE_LIMIT:
                self.decisions.clear()
            self.decisions[a] = decision
        if node_reason and not decision.allowed:
            return Decision(False, f"{node_reason}\n{decision.reason}" if decision.reason else node_reason)
        return decision

    def _evaluate(self, a: Attributes) -> Decision:
        problems: list[str] = []
        for binding in self.applicable(a.user, a.groups, a.namespace):
            subject = binding.applying_subject(a.user, a.groups)
            if subject is None:
                continue
            rules = self.role_rules(binding)
            if rules is None:
                problems.append(self._missing_role(binding))
                continue
            for rule in rules:
                if rule.allows(a):
                    return Decision(True, f"RBAC: allowed by {binding.describe(subject)}")
        if problems:
            joined = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
            return Decision(False, f"RBAC: {joined}")
        return Decision(False)

    def rules_for(self, user: str, groups: Sequence[str], namespace: str, *,
                  chain: bool = False) -> tuple[list[Rule], list[str]]:
        """kube's RulesFor: every rule granted to the user in the namespace (cluster-wide ones included),
        and the resolution errors (bindings whose role is missing). ``chain``: the whole authorizer chain's
        answer (SelfSubjectRulesReview), where the Node authorizer cannot list a node's rules."""
        rules: list[Rule] = []
        problems: list[str] = []
        if chain and self.node is not None and user.startswith(NODE_USER_PREFIX) and NODES_GROUP in groups:
            problems.append("node authorizer does not support user rule resolution")
        if SUPERUSER_GROUP in groups:
            rules.extend([Rule(("*",), ("*",), ("*",)), Rule(("*",), urls=("*",))])
        for binding in self.applicable(user, groups, namespace):
            if binding.applying_subject(user, groups) is None:
                continue
            found = self.role_rules(binding)
            if found is None:
                problems.append(self._missing_role(binding))
            else:
                rules.extend(found)
        return rules, problems

    # ---------------------------------------------------------------- escalation
    def confirm_no_escalation(self, user: Any, namespace: str, requested: Sequence[Rule]) -> str | None:
        """kube's ConfirmNoEscalation: None when the user holds every requested permission, else the error."""
        owned, problems = self.rules_for(user.name, user.groups, namespace)
        missing = covers(owned, requested)
        if not missing:
            return None
        lines = sorted({compact_string(r) for r in compact(missing)})
        groups = go_quoted_list(user.groups)
        msg = (f'user "{user.name}" (groups={groups}) is attempting to grant RBAC permissions not currently '
               f"held:\n" + "\n".join(lines))
        if problems:
            msg += f"; resolution errors: [{', '.join(problems)}]"
        return msg


# ============================================================================ kube's forbidden texts
def forbidden_message(a: Attributes) -> str:
    """kube's forbiddenMessage."""
    if not a.resource_request:
        return f'User "{a.user}" cannot {a.verb} path "{a.path}"'
    resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    return f'User "{a.user}" cannot {a.verb} resource "{resource}" in API group "{a.api_group}" {where}'


def forbidden_error(a: Attributes, reason: str = "") -> errors.ApiError:
    """kube's responsewriters.Forbidden: 403 with ``<resource> "<name>" is forbidden: <message>[: reason]``."""
    message = forbidden_message(a)
    if reason:
        message = f"{message}: {reason}"
    if not a.resource_request:
        return errors.forbidden(f"forbidden: {message}")
    qualified = errors.qualified(a.api_group, a.resource)
    subject = f'{qualified} "{a.name}" is forbidden' if a.name else f"{qualified} is forbidden"
    return errors.forbidden(f"{subject}: {message}", a.api_group, a.resource, a.name)


IMPERSONATE_TARGETS = {"users": ("", "users"), "groups": ("", "groups"), "serviceaccounts": ("", "serviceaccounts"),
                       "uids": ("authentication.k8s.io", "uids"),
                       "userextras": ("authentication.k8s.io", "userextras")}


def impersonation_attributes(user: Any, target: str, name: str, *, namespace: str = "",
                             extra_key: str = "") -> Attributes:
    """The attributes kube's impersonation filter authorizes: verb ``impersonate`` on users / groups /
    serviceaccounts (in their namespace) / uids / userextras (subresource = the extra's key)."""
    group, resource = IMPERSONATE_TARGETS[target]
    return Attributes(user.name, tuple(user.groups), "impersonate", group, resource,
                      extra_key if target == "userextras" else "", namespace, name)
