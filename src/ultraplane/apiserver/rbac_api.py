"""The RBAC and authorization API: strategies for rbac.authorization.k8s.io/v1 and the access reviews.

- Role, ClusterRole, RoleBinding, ClusterRoleBinding: kube's validation, defaults, table columns, and
  escalation prevention (kube's ``policybased`` storage): a user may create or update a role only with
  rules they hold (or ``escalate`` on it), and a binding only to a role whose rules they hold (or
  ``bind`` on it); system:masters may do anything.
- authorization.k8s.io/v1 SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectAccessReview,
  SelfSubjectRulesReview: create-only, answered from the in-memory authorizer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from ultraplane.apiserver import errors
from ultraplane.apiserver.rbac import (
    GROUP,
    SUPERUSER_GROUP,
    Attributes,
    Binding,
    RbacAuthorizer,
    Rule,
    compile_rules,
    current_user,
)
from ultraplane.apiserver.registry import Column, Obj, Strategy
from ultraplane.apiserver.resources import AGE, AGE_DESCRIPTION, NAME, age
from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.apiserver.validation import Cause, invalid, not_supported, required

AUTHZ_GROUP = "authorization.k8s.io"
SUBJECT_KINDS = ["ServiceAccount", "User", "Group"]
GC_FIELDS = ("ownerReferences", "finalizers", "selfLink", "managedFields", "resourceVersion")


# ============================================================================ validation
def rule_causes(rules: Any, namespaced: bool) -> list[Cause]:
    """kube's ValidatePolicyRule for each rule."""
    causes: list[Cause] = []
    for i, r in enumerate(rules or []):
        path = f"rules[{i}]"
        if not isinstance(r, dict):
            causes.append(invalid(path, r, "must be an object"))
            continue
        if not r.get("verbs"):
            causes.append(required(f"{path}.verbs", "verbs must contain at least one value"))
        urls = r.get("nonResourceURLs") or []
        if urls:
            if namespaced:
                causes.append(invalid(f"{path}.nonResourceURLs", urls,
                                      "namespaced rules cannot apply to non-resource URLs"))
            if r.get("apiGroups") or r.get("resources") or r.get("resourceNames"):
                causes.append(invalid(f"{path}.nonResourceURLs", urls,
                                      "rules cannot apply to both regular resources and non-resource URLs"))
            continue
        if not r.get("apiGroups"):
            causes.append(required(f"{path}.apiGroups", "resource rules must supply at least one api group"))
        if not r.get("resources"):
            causes.append(required(f"{path}.resources", "resource rules must supply at least one resource"))
    return causes


def aggregation_causes(obj: Obj) -> list[Cause]:
    rule = obj.get("aggregationRule")
    causes: list[Cause] = []
    if rule is None:
        return causes
    selectors = (rule or {}).get("clusterRoleSelectors") or []
    if not selectors:
        causes.append(required("aggregationRule.clusterRoleSelectors", "at least one clusterRoleSelector required "
                                                                      "if aggregationRule is non-nil"))
    for i, selector in enumerate(selectors):
        try:
            label_selector_from_dict(selector)
        except SelectorError as exc:
            causes.append(invalid(f"aggregationRule.clusterRoleSelectors[{i}]", selector, str(exc)))
    return causes


def binding_causes(obj: Obj, old: Obj | None, namespaced: bool) -> list[Cause]:
    """kube's ValidateRoleBinding / ValidateClusterRoleBinding (+ the immutable roleRef on update)."""
    causes: list[Cause] = []
    ref = obj.get("roleRef") or {}
    if ref.get("apiGroup", "") != GROUP:
        causes.append(not_supported("roleRef.apiGroup", ref.get("apiGroup", ""), [GROUP]))
    kinds = ["Role", "ClusterRole"] if namespaced else ["ClusterRole"]
    if ref.get("kind", "") not in kinds:
        causes.append(not_supported("roleRef.kind", ref.get("kind", ""), kinds))
    if not ref.get("name"):
        causes.append(required("roleRef.name"))
    for i, s in enumerate(obj.get("subjects") or []):
        path = f"subjects[{i}]"
        if not isinstance(s, dict):
            causes.append(invalid(path, s, "must be an object"))
            continue
        kind, name = s.get("kind", ""), s.get("name", "")
        if not name:
            causes.append(required(f"{path}.name"))
        if kind == "ServiceAccount":
            if s.get("apiGroup"):
                causes.append(not_supported(f"{path}.apiGroup", s["apiGroup"], [""]))
            if not namespaced and not s.get("namespace"):
                causes.append(required(f"{path}.namespace"))
        elif kind in ("User", "Group"):
            if s.get("apiGroup") != GROUP:
                causes.append(not_supported(f"{path}.apiGroup", s.get("apiGroup", ""), [GROUP]))
        else:
            causes.append(not_supported(f"{path}.kind", kind, SUBJECT_KINDS))
    if old is not None and (old.get("roleRef") or {}) != ref:
        causes.append(invalid("roleRef", ref, "cannot change roleRef"))
    return causes


def binding_defaults(obj: Obj) -> None:
    """kube's SetDefaults_Subject: User and Group subjects default to the RBAC API group."""
    for s in obj.get("subjects") or []:
        if isinstance(s, dict) and not s.get("apiGroup") and s.get("kind") in ("User", "Group"):
            s["apiGroup"] = GROUP


def only_gc_fields_changed(obj: Obj, old: Obj | None) -> bool:
    """kube's IsOnlyMutatingGCFields: an update touching only what the garbage collector writes."""
    if old is None:
        return False

    def stripped(o: Obj) -> Obj:
        meta = {k: v for k, v in (o.get("metadata") or {}).items() if k not in GC_FIELDS}
        return {**{k: v for k, v in o.items() if k not in ("metadata", "kind", "apiVersion")}, "metadata": meta}

    return stripped(obj) == stripped(old)


# ============================================================================ escalation prevention
FULL_AUTHORITY = (Rule(("*",), ("*",), ("*",)), Rule(("*",), urls=("*",)))


def aggregates(role: Obj | None) -> bool:
    return bool(role and ((role.get("aggregationRule") or {}).get("clusterRoleSelectors")))


class EscalationCheck:
    """kube's policybased storages for roles and bindings, run inside the strategy's validation."""

    def __init__(self, authz: RbacAuthorizer) -> None:
        self.authz = authz

    @staticmethod
    def _user() -> Any:
        user = current_user.get()
        if user is None or SUPERUSER_GROUP in user.groups:
            return None  # in-process writers (bootstrap, aggregation) and system:masters may do anything
        return user

    def _allowed(self, user: Any, verb: str, resource: str, namespace: str, name: str) -> bool:
        return self.authz.authorize(Attributes(user.name, tuple(user.groups), verb, GROUP, resource, "",
                                               namespace, name)).allowed

    def role(self, plural: str, obj: Obj, old: Obj | None) -> None:
        user = self._user()
        if user is None or only_gc_fields_changed(obj, old):
            return
        meta = obj["metadata"]
        namespace = meta.get("namespace", "") if plural == "roles" else ""
        # kube authorizes escalate with the request's name: none on create
        if self._allowed(user, "escalate", plural, namespace, meta.get("name", "") if old is not None else ""):
            return
        name = meta.get("name", "")
        problem = self.authz.confirm_no_escalation(user, namespace, compile_rules(obj.get("rules")))
        if problem is not None:
            raise errors.forbidden(f'{plural}.{GROUP} "{name}" is forbidden: {problem}', GROUP, plural, name)
        # an aggregationRule can gather anything (and setting or dropping one can stop tightening): it needs
        # cluster-admin's permissions, on the old object as well as the new one
        if plural == "clusterroles" and (aggregates(obj) or aggregates(old)):
            if self.authz.confirm_no_escalation(user, "", FULL_AUTHORITY) is not None:
                raise errors.forbidden(f'{plural}.{GROUP} "{name}" is forbidden: must have cluster-admin privileges '
                                       f"to use the aggregationRule", GROUP, plural, name)

    def binding(self, plural: str, obj: Obj, old: Obj | None) -> None:
        user = self._user()
        if user is None or only_gc_fields_changed(obj, old):
            return
        meta = obj["metadata"]
        namespace = meta.get("namespace", "") if plural == "rolebindings" else ""
        ref = obj.get("roleRef") or {}
        kind, role = ref.get("kind", ""), ref.get("name", "")
        resource = {"ClusterRole": "clusterroles", "Role": "roles"}.get(kind)
        if resource is None:
            return  # validation refuses it
        if self._allowed(user, "bind", resource, namespace, role):
            return
        rules = self.authz.role_rules(Binding(meta.get("name", ""), namespace, kind, role, ()))
        if rules is None:
            raise errors.not_found(GROUP, resource, role)
        problem = self.authz.confirm_no_escalation(user, namespace, rules)
        if problem is not None:
            name = meta.get("name", "")
            raise errors.forbidden(f'{plural}.{GROUP} "{name}" is forbidden: {problem}', GROUP, plural, name)


# ============================================================================ tables
def created_at(obj: Obj, now: dt.datetime) -> list[Any]:
    return [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp", "")]


def binding_row(obj: Obj, now: dt.datetime) -> list[Any]:
    """kube's printRoleBinding: ROLE as Kind/name; -o wide adds users, groups, service accounts."""
    ref = obj.get("roleRef") or {}
    users, groups, sas = [], [], []
    for s in obj.get("subjects") or []:
        kind = s.get("kind")
        if kind == "User":
            users.append(s.get("name", ""))
        elif kind == "Group":
            groups.append(s.get("name", ""))
        elif kind == "ServiceAccount":
            sas.append(f"{s.get('namespace', '')}/{s.get('name', '')}")
    return [obj["metadata"]["name"], f"{ref.get('kind', '')}/{ref.get('name', '')}", age(obj, now),
            ", ".join(users), ", ".join(groups), ", ".join(sas)]


def binding_columns() -> list[Column]:
    return [NAME(), Column("Role", description="RoleRef can reference a Role in the current namespace or a "
                                               "ClusterRole in the global namespace. If the RoleRef cannot be "
                                               "resolved, the Authorizer must return an error. This field is "
                                               "immutable."), AGE(),
            Column("Users", priority=1, description="Users in the roleBinding"),
            Column("Groups", priority=1, description="Groups in the roleBinding"),
            Column("ServiceAccounts", priority=1, description="ServiceAccounts in the roleBinding")]


def role_columns() -> list[Column]:
    return [NAME(), Column("Created At", "date", description=AGE_DESCRIPTION)]


# ============================================================================ reviews
def _user_of(spec: Obj) -> tuple[str, tuple[str, ...]]:
    return str(spec.get("user") or ""), tuple(str(g) for g in spec.get("groups") or [])


def review_attributes(spec: Obj, user: str, groups: tuple[str, ...]) -> Attributes:
    res = spec.get("resourceAttributes")
    if res is not None:
        selector = res.get("fieldSelector") if isinstance(res.get("fieldSelector"), dict) else {}
        return Attributes(user, groups, str(res.get("verb", "")), str(res.get("group", "")),
                          str(res.get("resource", "")), str(res.get("subresource", "")),
                          str(res.get("namespace", "")), str(res.get("name", "")),
                          field_selector=str(selector.get("rawSelector") or ""))
    non = spec.get("nonResourceAttributes") or {}
    return Attributes(user, groups, str(non.get("verb", "")), path=str(non.get("path", "")), resource_request=False)


def review_spec_causes(spec: Obj) -> list[Cause]:
    """kube's ValidateSubjectAccessReviewSpec (the attribute half)."""
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if res is None and non is None:
        return [invalid("spec.resourceAttributes", "null",
                        "exactly one of nonResourceAttributes or resourceAttributes must be specified")]
    if res is not None and non is not None:
        return [invalid("spec.nonResourceAttributes", non, "cannot be specified in combination with "
                                                           "resourceAttributes")]
    return []


def decide(authz: RbacAuthorizer, review: Obj, a: Attributes) -> Obj:
    decision = authz.authorize(a)
    review.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    status: Obj = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    review["status"] = status
    return review


def review_handlers(authz: RbacAuthorizer) -> dict[str, Callable[[Obj, Any], Obj]]:
    def self_access(review: Obj, user: Any) -> Obj:
        spec = review.get("spec") or {}
        causes = review_spec_causes(spec)
        if causes:
            raise errors.invalid("SelfSubjectAccessReview", AUTHZ_GROUP, "", causes)
        return decide(authz, review, review_attributes(spec, user.name, tuple(user.groups)))

    def subject_access(review: Obj, user: Any) -> Obj:
        spec = review.get("spec") or {}
        name, groups = _user_of(spec)
        causes = review_spec_causes(spec)
        if not name and not groups:
            causes.append(invalid("spec.user", "", "at least one of user or group must be specified"))
        if causes:
            raise errors.invalid("SubjectAccessReview", AUTHZ_GROUP, "", causes)
        return decide(authz, review, review_attributes(spec, name, groups))

    def local_access(review: Obj, user: Any) -> Obj:
        spec = review.get("spec") or {}
        namespace = (review.get("metadata") or {}).get("namespace", "")
        name, groups = _user_of(spec)
        causes = review_spec_causes(spec)
        if not name and not groups:
            causes.append(invalid("spec.user", "", "at least one of user or group must be specified"))
        if spec.get("nonResourceAttributes") is not None:
            causes.append(invalid("spec.nonResourceAttributes", spec["nonResourceAttributes"],
                                  "disallowed on this kind of request"))
        if causes:
            raise errors.invalid("LocalSubjectAccessReview", AUTHZ_GROUP, "", causes)
        if (spec.get("resourceAttributes") or {}).get("namespace", "") != namespace:
            raise errors.bad_request(f"spec.resourceAttributes.namespace must match namespace: {namespace}")
        return decide(authz, review, review_attributes(spec, name, groups))

    def self_rules(review: Obj, user: Any) -> Obj:
        namespace = str((review.get("spec") or {}).get("namespace") or "")
        rules, problems = authz.rules_for(user.name, user.groups, namespace, chain=True)
        resource_rules, url_rules = [], []
        for r in rules:
            if r.urls:
                url_rules.append({"verbs": list(r.verbs), "nonResourceURLs": list(r.urls)})
            else:
                entry: Obj = {"verbs": list(r.verbs), "apiGroups": list(r.api_groups), "resources": list(r.resources)}
                if r.resource_names:
                    entry["resourceNames"] = list(r.resource_names)
                resource_rules.append(entry)
        review.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        status: Obj = {"resourceRules": resource_rules, "nonResourceRules": url_rules,
                       "incomplete": bool(problems)}
        if problems:
            status["evaluationError"] = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        review["status"] = status
        return review

    return {"selfsubjectaccessreviews": self_access, "subjectaccessreviews": subject_access,
            "localsubjectaccessreviews": local_access, "selfsubjectrulesreviews": self_rules}


# ============================================================================ strategies
def strategies(authz: RbacAuthorizer) -> list[Strategy]:
    s = Strategy
    check = EscalationCheck(authz)

    def role_validate(plural: str, namespaced: bool) -> Callable[[Obj, Obj | None], list[Cause]]:
        def validate(obj: Obj, old: Obj | None) -> list[Cause]:
            check.role(plural, obj, old)
            causes = rule_causes(obj.get("rules"), namespaced)
            return causes + (aggregation_causes(obj) if not namespaced else [])
        return validate

    def binding_validate(plural: str, namespaced: bool) -> Callable[[Obj, Obj | None], list[Cause]]:
        def validate(obj: Obj, old: Obj | None) -> list[Cause]:
            check.binding(plural, obj, old)
            return binding_causes(obj, old, namespaced)
        return validate

    handlers = review_handlers(authz)
    return [
        s(GROUP, "v1", "Role", "roles", "role", name_rule="pathsegment", validate=role_validate("roles", True),
          columns=role_columns(), row=created_at),
        s(GROUP, "v1", "ClusterRole", "clusterroles", "clusterrole", namespaced=False, name_rule="pathsegment",
          validate=role_validate("clusterroles", False), columns=role_columns(), row=created_at),
        s(GROUP, "v1", "RoleBinding", "rolebindings", "rolebinding", name_rule="pathsegment",
          defaults=binding_defaults, validate=binding_validate("rolebindings", True), columns=binding_columns(),
          row=binding_row),
        s(GROUP, "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", namespaced=False,
          name_rule="pathsegment", defaults=binding_defaults, validate=binding_validate("clusterrolebindings", False),
          columns=binding_columns(), row=binding_row),
        *(s(AUTHZ_GROUP, "v1", kind, kind.lower() + "s", kind.lower(), namespaced=kind.startswith("Local"),
            verbs=("create",), create_handler=handlers[kind.lower() + "s"])
          for kind in ("SelfSubjectAccessReview", "SelfSubjectRulesReview", "SubjectAccessReview",
                       "LocalSubjectAccessReview")),
    ]
