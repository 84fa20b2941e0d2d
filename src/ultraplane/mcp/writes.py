"""Writes in two steps: a server-side dry run whose diff is returned with a hash, then the confirmed write.

The first call runs the request with `dryRun=All` (admission, validation, defaulting and RBAC all apply,
nothing is stored), diffs the object before and after, and keeps the exact request under
`sha256(request + diff)`. A second call carrying that hash as `confirm` runs the dry run again and applies
only when it still produces the same diff, so an object that changed in between is never overwritten
blindly. Plans expire after PLAN_TTL_S.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from ultraplane.client.http import APPLY, JSON_PATCH, MERGE, STRATEGIC_MERGE, ApiError
from ultraplane.mcp.kube import CallerClient, Identity
from ultraplane.mcp.views import redact

Obj = dict[str, Any]
PLAN_TTL_S = 600.0
FIELD_MANAGER = "ultraplane-mcp"
PATCH_TYPES = {"strategic": STRATEGIC_MERGE, "merge": MERGE, "json": JSON_PATCH}
# fields that differ on every dry run or are bookkeeping: left out of the diff so that it is reproducible
VOLATILE_META = ("resourceVersion", "managedFields", "uid", "creationTimestamp", "generation", "selfLink")


class WriteRefused(Exception):
    """A write the server will not do (disabled, unknown plan, changed diff); nothing was changed."""


@dataclass
class Request:
    verb: str  # apply | patch | delete | scale | rollout-restart
    method: str
    path: str  # the object's path
    body: Any
    content_type: str
    params: Obj
    target: str  # Kind namespace/name, for people
    is_secret: bool

    def canonical(self) -> bytes:
        return orjson.dumps({"method": self.method, "path": self.path, "body": self.body,
                             "contentType": self.content_type, "params": self.params}, option=orjson.OPT_SORT_KEYS)


@dataclass
class Plan:
    request: Request
    diff: str
    digest: str
    created: float
    caller: Identity  # only the caller who saw the diff may confirm it


def _comparable(obj: Obj | None, is_secret: bool, allow_sensitive: bool) -> str:
    if not obj or obj.get("kind") == "Status":
        return ""
    obj = redact(obj, is_secret) if not allow_sensitive else obj
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in VOLATILE_META}
    clean = {**obj, "metadata": meta}
    clean.pop("status", None)  # writes here change spec and metadata; status is the controllers' answer
    return yaml.safe_dump(clean, sort_keys=True, default_flow_style=False)


def unified_diff(before: str, after: str, target: str) -> str:
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile=f"{target} (live)", tofile=f"{target} (after)", n=3)
    return "".join(lines) or "(no change)"


class Writer:
    def __init__(self, client: CallerClient, allow_write: bool, allow_sensitive: bool) -> None:
        self.client = client
        self.allow_write = allow_write
        self.allow_sensitive = allow_sensitive
        self.plans: dict[str, Plan] = {}

    def check_allowed(self) -> None:
        if not self.allow_write:
            raise WriteRefused("writes are disabled: this MCP server is read-only (start it with --allow-write); "
                               "nothing was changed")

    async def _live(self, request: Request) -> Obj | None:
        try:
            return await self.client.get(request.path)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def _dry_run(self, request: Request) -> tuple[str, Obj]:
        live = await self._live(request)
        if request.verb == "delete" and live is None:
            raise WriteRefused(f"{request.target} does not exist; nothing to delete")
        params = {**request.params, "dryRun": "All"}
        result = await self.client.request(request.method, request.path, params, request.body, request.content_type)
        after = None if request.verb == "delete" else result
        diff = unified_diff(_comparable(live, request.is_secret, self.allow_sensitive),
                            _comparable(after, request.is_secret, self.allow_sensitive), request.target)
        return diff, result

    def _digest(self, request: Request, diff: str) -> str:
        return hashlib.sha256(request.canonical() + b"\n" + diff.encode()).hexdigest()

    async def plan(self, request: Request) -> Obj:
        self.check_allowed()
        self._expire()
        diff, _ = await self._dry_run(request)
        digest = self._digest(request, diff)
        self.plans[digest] = Plan(request, diff, digest, time.monotonic(), self.client.current())
        return {"dryRun": True, "target": request.target, "operation": request.verb, "diff": diff,
                "hash": digest, "next": "nothing was changed; to apply exactly this, call the same tool again "
                                        f'with confirm="{digest}"'}

    async def confirm(self, digest: str, verb: str) -> Obj:
        self.check_allowed()
        self._expire()
        plan = self.plans.get(digest)
        if plan is None:
            raise WriteRefused(f'no pending dry run has hash "{digest}" (unknown or expired after '
                               f"{int(PLAN_TTL_S)}s); call without confirm to get a new diff; nothing was changed")
        if plan.caller != self.client.current():
            raise WriteRefused(f'hash "{digest}" belongs to a dry run by another caller; nothing was changed')
        if plan.request.verb != verb:
            raise WriteRefused(f'hash "{digest}" belongs to a {plan.request.verb} of {plan.request.target}, '
                               f"not a {verb}; nothing was changed")
        diff, _ = await self._dry_run(plan.request)
        if self._digest(plan.request, diff) != digest:
            self.plans.pop(digest, None)
            fresh = await self.plan(plan.request)
            raise WriteRefused(f"{plan.request.target} changed since the dry run, so the confirmed diff no longer "
                               f"applies; nothing was changed. New diff (hash {fresh['hash']}):\n{fresh['diff']}")
        request = plan.request
        result = await self.client.request(request.method, request.path, request.params or None, request.body,
                                           request.content_type)
        self.plans.pop(digest, None)
        meta = result.get("metadata") or {}
        return {"applied": True, "target": request.target, "operation": request.verb, "diff": diff,
                "resourceVersion": meta.get("resourceVersion"), "hash": digest}

    def _expire(self) -> None:
        now = time.monotonic()
        for digest in [d for d, p in self.plans.items() if now - p.created > PLAN_TTL_S]:
            del self.plans[digest]


def apply_request(path: str, manifest: Obj, target: str, is_secret: bool, force: bool) -> Request:
    params: Obj = {"fieldManager": FIELD_MANAGER}
    if force:
        params["force"] = True
    return Request("apply", "PATCH", path, manifest, APPLY, params, target, is_secret)


def patch_request(path: str, patch: Any, patch_type: str, target: str, is_secret: bool) -> Request:
    if patch_type not in PATCH_TYPES:
        raise ValueError(f'patch_type must be one of {", ".join(PATCH_TYPES)}, not "{patch_type}"')
    return Request("patch", "PATCH", path, patch, PATCH_TYPES[patch_type], {"fieldManager": FIELD_MANAGER},
                   target, is_secret)


def delete_request(path: str, target: str, is_secret: bool) -> Request:
    return Request("delete", "DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                              "propagationPolicy": "Background"}, "application/json", {},
                   target, is_secret)


def scale_request(path: str, replicas: int, target: str) -> Request:
    return Request("scale", "PATCH", path, {"spec": {"replicas": replicas}}, MERGE,
                   {"fieldManager": FIELD_MANAGER}, target, False)


def restart_request(path: str, stamp: str, target: str) -> Request:
    """kubectl rollout restart: a template annotation that changes, so the controller rolls every pod."""
    body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
    return Request("rollout-restart", "PATCH", path, body, STRATEGIC_MERGE, {"fieldManager": FIELD_MANAGER},
                   target, False)
