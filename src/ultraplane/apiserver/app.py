"""The API server application: authentication, authorization, routing, discovery and REST verbs.

``ApiServer.handle`` takes a parsed HTTP request (server.py) and returns a response. Layers:

1. authenticate (authn.py): verified client certificate (CN = user, O = groups), a static or
   service-account bearer token, anonymous only when enabled; then Impersonate-* headers.
2. parse the path into kube's RequestInfo (verb, group, version, namespace, resource, name,
   subresource).
3. authorize: ``system:masters`` may do everything, then the Node authorizer, then RBAC; else kube's 403.
4. serve: discovery / openapi / version / health, or the generic registry (registry.py) with the
   resource's Strategy, then encode the result as JSON, a Table or PartialObjectMetadata.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ultraplane.apiserver import errors, rbac
from ultraplane.apiserver.authn import Authenticator, ImpersonationError, User, wants_impersonation
from ultraplane.apiserver.errors import ApiError
from ultraplane.apiserver.metrics import RequestMetrics
from ultraplane.apiserver.registry import (
    ListOptions,
    Obj,
    Registry,
    Strategy,
    WriteOptions,
    get_path,
    now_rfc3339,
    set_path,
)
from ultraplane.apiserver.server import Request, Response

log = logging.getLogger("ultraplane.apiserver")

DISCOVERY_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
KUBE_VERSION = "v1.32.0"
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"],
                     "binding": ["create"], "finalize": ["update"], "eviction": ["create"], "log": ["get"],
                     "token": ["create"], "exec": ["create", "get"], "attach": ["create", "get"],
                     "portforward": ["create", "get"]}
# subresources answering with another kind than their resource's (discovery's responseKind)
SUBRESOURCE_KINDS = {"scale": ("autoscaling", "v1", "Scale"), "binding": ("", "v1", "Binding"),
                     "eviction": ("policy", "v1", "Eviction"), "token": ("authentication.k8s.io", "v1", "TokenRequest"),
                     "exec": ("", "v1", "PodExecOptions"), "attach": ("", "v1", "PodAttachOptions"),
                     "portforward": ("", "v1", "PodPortForwardOptions")}
# connect subresources: a WebSocket GET needs `create` as a POST does (kube's AuthorizePodWebsocketUpgrade...)
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})


@dataclass
class RequestInfo:
    verb: str
    api_prefix: str  # "api" | "apis"
    group: str
    version: str
    namespace: str
    resource: str
    name: str
    subresource: str


def load_token_file(path: str | None) -> dict[str, User]:
    """kube's --token-auth-file: token,user,uid,"group1,group2" per line."""
    tokens: dict[str, User] = {}
    if not path:
        return tokens
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0].startswith("#"):
                continue
            groups = [g for g in (row[3].split(",") if len(row) > 3 else []) if g]
            tokens[row[0]] = User(row[1], groups, row[2] if len(row) > 2 else "")
    return tokens


def name_from_field_selector(selector: str) -> str:
    """The name a list/watch selects with ``metadata.name=X`` (kube authorizes it as a request for X)."""
    for term in selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and key.strip() == "metadata.name" and not key.endswith("!"):
                return value.strip()
    return ""


def served_version() -> str:
    try:
        from ultraplane.apiserver import openapi

        version = getattr(openapi, "SERVED_VERSION", KUBE_VERSION)
        if version.endswith(".x"):
            version = version[:-2] + ".0"
        return version
    except ImportError:
        return KUBE_VERSION


def version_info() -> dict[str, Any]:
    import platform

    version = served_version()
    major, minor = version.lstrip("v").split(".")[:2]
    return {"major": major, "minor": minor, "gitVersion": f"{version}-ultraplane",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": f"python{platform.python_version()}",
            "compiler": "cpython", "platform": f"{platform.system().lower()}/{_arch()}"}


def _arch() -> str:
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def json_response(status: int, body: Any) -> Response:
    # kube's JSON serializer writes with encoding/json's Encoder: every body ends with a newline, which
    # clients keep (create_from_yaml's FailToCreateError text is the 409 bodies joined as they came)
    return Response(status, orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE))


def with_warnings(response: Response, wo: WriteOptions) -> Response:
    for text in wo.warnings:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.append(("Warning", f'299 - "{escaped}"'))
    return response


def error_response(exc: ApiError) -> Response:
    return Response(exc.code, orjson.dumps(exc.status, option=orjson.OPT_APPEND_NEWLINE))


def storage_error_text(exc: Exception) -> str | None:
    """etcd's own text for a storage failure (e.g. "etcdserver: mvcc: database space exceeded" past the
    quota), which kube-apiserver passes on as a 500 Status without a reason; None for other errors."""
    from ultraplane.store.errors import StoreError

    if isinstance(exc, StoreError):
        return str(exc.message)
    details = getattr(exc, "details", None)
    if type(exc).__name__ == "AioRpcError" and callable(details):
        text = str(details())
        if text.startswith("etcdserver: "):  # clientv3 turns etcd's own errors into their text
            return text
        # any other gRPC failure reaches kube as the status error's text, e.g. a message over the receive limit
        code = "".join(part.title() for part in exc.code().name.split("_"))  # type: ignore[attr-defined]
        return f"rpc error: code = {code} desc = {text}"
    return None


class ApiServer:
    def __init__(self, registry: Registry, *, tokens: dict[str, User] | None = None, anonymous: bool = False,
                 address: str = "127.0.0.1:6443", authenticator: Authenticator | None = None) -> None:
        self.registry = registry
        self.tokens = tokens or {}
        self.anonymous = anonymous
        # certificates, static and service-account tokens, anonymous (authn.py)
        self.authn = authenticator or Authenticator(registry, tokens=self.tokens, anonymous=anonymous)
        self.address = address
        self.schemas = None
        self.by_resource: dict[tuple[str, str, str], Strategy] = registry.strategies
        self.groups: dict[str, list[str]] = {}
        for (group, version, _plural) in registry.strategies:
            versions = self.groups.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        self._discovery_cache: dict[str, bytes] = {}
        self._version_body = orjson.dumps(version_info())
        self.metrics = RequestMetrics()
        self.flowcontrol: Any = None  # flowcontrol.FlowControl, installed by run.py
        self.authorizer: rbac.RbacAuthorizer | None = None  # installed by run.py; None: only system:masters
        # (resource, subresource) -> handler(request, namespace, name, verb): pods/log, pods/eviction
        self.subresource_handlers: dict[tuple[str, str], Callable[[Request, str, str, str], Awaitable[Response]]] = {}
        # other non-resource paths -> handler: the service-account issuer's OIDC discovery documents
        self.path_handlers: dict[str, Callable[[Request], Response]] = {}
        self.aggregator: Any = None  # aggregator.Aggregator, installed by run.py

    def resources_changed(self) -> None:
        """Resources came or went (CRDs): rebuild the group list and drop the cached discovery documents."""
        from ultraplane.apiserver.crd import version_priority

        groups: dict[str, list[str]] = {}
        custom: set[str] = set()
        for (group, version, _plural), s in list(self.registry.strategies.items()):
            versions = groups.setdefault(group, [])
            if version not in versions:
                versions.append(version)
            if s.custom:
                custom.add(group)
        for group in custom:  # kube orders a CRD group's versions by priority; the first is preferred
            groups[group].sort(key=version_priority)
        if self.aggregator is not None:  # groups served by aggregated API servers
            for group, versions in self.aggregator.groups().items():
                groups.setdefault(group, [])
                groups[group] = [*versions, *(v for v in groups[group] if v not in versions)]
        self.groups = groups
        self._discovery_cache.clear()

    def load_schemas(self) -> None:
        try:
            from ultraplane.apiserver import openapi

            self.schemas = openapi.Schemas.load()
            self.registry.schemas = self.schemas  # type: ignore[attr-defined]
        except Exception:
            log.warning("OpenAPI schemas unavailable; /openapi and strategic merge metadata are off", exc_info=True)

    # ================================================================ entry point
    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        mutating = request.method not in ("GET", "HEAD")
        self.metrics.inflight[mutating] += 1
        info_holder: list[RequestInfo | None] = [None]
        try:
            user = self.authn.authenticate(request)
            if not isinstance(user, User):
                user = await user  # a bearer token to verify
            if wants_impersonation(request):
                user = self.impersonate(request, user)
            response = await self.route(request, user, info_holder)
        except ApiError as exc:
            response = error_response(exc)
        except ImpersonationError as exc:
            response = Response(500, str(exc).encode() + b"\n", "text/plain; charset=utf-8")
        except Exception as exc:
            text = storage_error_text(exc)
            if text is None:
                raise
            response = Response(500, orjson.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                   "status": "Failure", "message": text, "code": 500},
                                                  option=orjson.OPT_APPEND_NEWLINE))
        finally:
            self.metrics.inflight[mutating] -= 1
        self.metrics.observe(info_holder[0], response.status, time.perf_counter() - started)
        return response

    def authenticate(self, request: Request) -> User | Awaitable[User]:
        return self.authn.authenticate(request)

    def impersonate(self, request: Request, requester: User) -> User:
        """Impersonate-* headers: each impersonated attribute needs the ``impersonate`` verb on it."""

        def check(user: User, target: str, name: str, namespace: str, extra_key: str) -> None:
            if "system:masters" in user.groups:
                return
            attrs = rbac.impersonation_attributes(user, target, name, namespace=namespace, extra_key=extra_key)
            decision = self.authorizer.authorize(attrs) if self.authorizer is not None else rbac.Decision(False)
            if not decision.allowed:
                raise rbac.forbidden_error(attrs, decision.reason)

        return self.authn.impersonate(request, requester, check)

    def authorize(self, user: User, info: RequestInfo | None, request: Request) -> None:
        """kube's chain: system:masters (the privileged group), Node (nodeauthz.py), then RBAC (rbac.py); kube's 403
        otherwise."""
        rbac.current_user.set(user)  # escalation checks on RBAC writes need the requester
        if "system:masters" in user.groups:
            return
        attrs = self.attributes(user, info, request)
        decision = self.authorizer.authorize(attrs) if self.authorizer is not None else rbac.Decision(False)
        if not decision.allowed:
            raise rbac.forbidden_error(attrs, decision.reason)

    @staticmethod
    def attributes(user: User, info: RequestInfo | None, request: Request) -> rbac.Attributes:
        if info is None:
            return rbac.Attributes(user.name, tuple(user.groups), request.method.lower(), path=request.path,
                                   resource_request=False)
        # no path for resource requests: RBAC does not read it, and it would split the decision memo
        selector = request.query.get("fieldSelector", "") if info.verb in ("list", "watch", "deletecollection") \
            else ""  # the Node authorizer's list/watch scoping (kube's AuthorizeWithSelectors)
        return rbac.Attributes(user.name, tuple(user.groups), info.verb, info.group, info.resource, info.subresource,
                               info.namespace, info.name, field_selector=selector)

    # ================================================================ routing
    async def route(self, request: Request, user: User, info_holder: list[RequestInfo | None]) -> Response:
        path = request.path
        parts = [p for p in path.split("/") if p]
        info = self.request_info(request, parts)
        info_holder[0] = info
        if self.flowcontrol is not None:  # API Priority and Fairness sits before authorization, as in kube
            return await self.flowcontrol.handle(request, user.name, user.groups, info,
                                                 lambda: self.serve_authorized(request, user, info, parts))
        return await self.serve_authorized(request, user, info, parts)

    async def serve_authorized(self, request: Request, user: User, info: RequestInfo | None,
                               parts: list[str]) -> Response:
        self.authorize(user, info, request)
        if info is None:
            if self.aggregator is not None and len(parts) == 3 and parts[0] == "apis":
                target = self.aggregator.backing(parts[1], parts[2])
                if target is not None:  # an aggregated group/version's discovery document
                    return await self.aggregator.proxy(request, user, target)
            return self.non_resource(request, parts)
        s = self.by_resource.get((info.group, info.version, info.resource))
        if s is None:
            target = self.aggregator.backing(info.group, info.version) if self.aggregator is not None else None
            if target is not None:
                return await self.aggregator.proxy(request, user, target)
            raise ApiError(errors.status(404, "NotFound", "the server could not find the requested resource", {}))
        return await self.serve_resource(request, info, s, user)

    def request_info(self, request: Request, parts: list[str]) -> RequestInfo | None:
        if not parts or parts[0] not in ("api", "apis"):
            return None
        if parts[0] == "api":
            if len(parts) < 3:
                return None
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) < 4:
                return None
            group, version, rest = parts[1], parts[2], parts[3:]
        namespace = ""
        if rest[0] == "namespaces" and len(rest) > 1:
            namespace = rest[1]
            if len(rest) > 2 and rest[2] not in ("status", "finalize"):
                rest = rest[2:]
        resource = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        method = request.method
        watch = request.query.get("watch", "") in ("true", "1")
        if method == "GET":
            verb = "watch" if watch else "get" if name else "list"
        elif method == "POST":
            verb = "create"
        elif method == "PUT":
            verb = "update"
        elif method == "PATCH":
            verb = "patch"
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        else:
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        if not name and verb in ("list", "watch", "deletecollection"):
            name = name_from_field_selector(request.query.get("fieldSelector", ""))  # as kube's RequestInfo does
        if verb == "get" and subresource in CONNECT_SUBRESOURCES and resource == "pods":
            verb = "create"
        return RequestInfo(verb, parts[0], group, version, namespace, resource, name, subresource)

    # ================================================================ non-resource endpoints
    def non_resource(self, request: Request, parts: list[str]) -> Response:
        path = request.path.rstrip("/") or "/"
        if path == "/version":
            return Response(200, self._version_body)
        handler = self.path_handlers.get(path)
        if handler is not None:
            return handler(request)
        if path == "/metrics":
            from ultraplane.apiserver import metrics

            collectors = [self.metrics] if self.flowcontrol is None else [self.metrics, self.flowcontrol]
            return Response(200, metrics.render(collectors), metrics.CONTENT_TYPE)
        if path == "/debug/ultraplane/tier" and self.flowcontrol is not None:
            return json_response(200, self.flowcontrol.tier.describe())
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        accept = request.headers.get("accept", "")
        aggregated = "as=APIGroupDiscoveryList" in accept
        if path == "/api":
            if aggregated:
                return Response(200, self.discovery_v2(core=True), DISCOVERY_V2)
            return json_response(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}]})
        if path == "/apis":
            if aggregated:
                return Response(200, self.discovery_v2(core=False), DISCOVERY_V2)
            return json_response(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                       "groups": [self.api_group(g) for g in self.groups if g]})
        if path == "/api/v1":
            return json_response(200, self.resource_list("", "v1"))
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in self.groups:
            return json_response(200, {"kind": "APIGroup", "apiVersion": "v1", **self.api_group(parts[1])})
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in self.groups.get(parts[1], []):
            return json_response(200, self.resource_list(parts[1], parts[2]))
        if parts and parts[0] == "openapi":
            return self.openapi(parts, request.headers.get("accept", ""))
        raise ApiError(errors.status(404, "NotFound", "the server could not find the requested resource", {}))

    def openapi(self, parts: list[str], accept: str = "") -> Response:
        if self.schemas is None:
            raise ApiError(errors.status(404, "NotFound", "the server could not find the requested resource", {}))
        if parts == ["openapi", "v2"]:
            # kubectl's client-side validation (e.g. of a `kind: List`) asks for the protobuf document
            if "application/com.github.proto-openapi.spec.v2" in accept:
                return Response(200, self.schemas.openapi_v2_protobuf(),
                                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            return Response(200, self.schemas.openapi_v2_json())
        if parts == ["openapi", "v3"]:
            return json_response(200, {"paths": self.schemas.openapi_v3_paths()})
        if len(parts) > 2 and parts[1] == "v3":
            body = self.schemas.openapi_v3_json("/".join(parts[2:]))
            if body is not None:
                return Response(200, body)
        raise ApiError(errors.status(404, "NotFound", "the server could not find the requested resource", {}))

    def api_group(self, group: str) -> dict[str, Any]:
        versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self.groups[group]]
        return {"name": group, "versions": versions, "preferredVersion": versions[0]}

    def resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for s in self.registry.strategies.values():
            if s.group != group or s.version != version:
                continue
            entry: dict[str, Any] = {"name": s.plural, "singularName": s.singular, "namespaced": s.namespaced,
                                     "kind": s.kind, "verbs": list(s.verbs)}
            if s.short_names:
                entry["shortNames"] = s.short_names
            if s.categories:
                entry["categories"] = s.categories
            resources.append(entry)
            for sub in s.subresources:
                sub_entry: dict[str, Any] = {"name": f"{s.plural}/{sub}", "singularName": "",
                                             "namespaced": s.namespaced, "kind": s.kind,
                                             "verbs": SUBRESOURCE_VERBS[sub]}
                if sub in SUBRESOURCE_KINDS:
                    sub_group, sub_version, sub_kind = SUBRESOURCE_KINDS[sub]
                    sub_entry["kind"] = sub_kind
                    if sub_group:
                        sub_entry.update(group=sub_group, version=sub_version)
                resources.append(sub_entry)
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".lstrip("/"),
                "resources": resources}

    def discovery_v2(self, core: bool) -> bytes:
        key = "core" if core else "groups"
        cached = self._discovery_cache.get(key)
        if cached is not None:
            return cached
        items = []
        for group, versions in self.groups.items():
            if (group == "") != core:
                continue
            if self.aggregator is not None and group in self.aggregator.groups():
                items.append({"metadata": {"name": group, "creationTimestamp": None},
                              "versions": self.aggregator.discovery_v2_versions(group)})
                continue
            version_entries = []
            for version in versions:
                resources = []
                for s in self.registry.strategies.values():
                    if s.group != group or s.version != version:
                        continue
                    entry: dict[str, Any] = {
                        "resource": s.plural,
                        "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                        "scope": "Namespaced" if s.namespaced else "Cluster",
                        "singularResource": s.singular, "verbs": list(s.verbs)}
                    if s.short_names:
                        entry["shortNames"] = s.short_names
                    if s.categories:
                        entry["categories"] = s.categories
                    subs = []
                    for sub in s.subresources:
                        kind = {"group": s.group, "version": s.version, "kind": s.kind}
                        if sub in SUBRESOURCE_KINDS:
                            sub_group, sub_version, sub_kind = SUBRESOURCE_KINDS[sub]
                            kind = {"group": sub_group, "version": sub_version, "kind": sub_kind}
                        subs.append({"subresource": sub, "responseKind": kind, "verbs": SUBRESOURCE_VERBS[sub]})
                    if subs:
                        entry["subresources"] = subs
                    resources.append(entry)
                version_entries.append({"version": version, "resources": resources, "freshness": "Current"})
            items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": version_entries})
        body = orjson.dumps({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
                             "metadata": {}, "items": items})
        self._discovery_cache[key] = body
        return body

    # ================================================================ resources
    async def serve_resource(self, request: Request, info: RequestInfo, s: Strategy, user: User) -> Response:
        reg = self.registry
        q = request.query
        ns = info.namespace if s.namespaced else ""
        if s.namespaced and not ns and info.verb not in ("list", "watch", "deletecollection"):
            raise ApiError(errors.status(404, "NotFound", "the server could not find the requested resource", {}))
        sub = info.subresource
        if sub and sub not in s.subresources:
            raise ApiError(errors.status(404, "NotFound", "the server could not find the requested resource", {}))
        handler = self.subresource_handlers.get((s.plural, sub)) if sub else None
        if handler is not None:
            return await handler(request, ns, info.name, info.verb)
        accept = request.headers.get("accept", "")
        verb = info.verb
        wo = WriteOptions.from_query(q, request.headers.get("user-agent", "")) if verb in (
            "create", "update", "patch", "delete", "deletecollection") else None
        if verb == "get":
            obj = await reg.get(s, ns, info.name)
            if sub == "scale":
                return json_response(200, self.scale_of(s, obj))
            return self.encode_object(s, obj, accept, q)
        if verb == "list":
            result = await reg.list(s, ns, ListOptions.from_query(q))
            return self.encode_list(s, result, accept, q)
        if verb == "watch":
            opts = ListOptions.from_query(q)
            timeout = float(q.get("timeoutSeconds") or 1800)
            stream = await reg.watch(s, ns, info.name, opts, bookmarks=q.get("allowWatchBookmarks") in ("true", "1"),
                                     timeout=timeout)
            table = "as=Table" in accept
            if table:
                stream = self.table_watch(s, stream, q)
            return Response(200, content_type="application/json", stream=stream)
        if s.create_handler is not None:
            if verb != "create" or info.name:
                raise errors.method_not_allowed("the server does not allow this method on the requested resource")
            body = self.decode_body(request, s.kind)
            self.registry.check_type(s, body)
            if s.namespaced:  # LocalSubjectAccessReview: the review's namespace is the URL's
                if body["metadata"].get("namespace") not in (None, "", ns):
                    raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                             "sent on the request")
                body["metadata"]["namespace"] = ns
            result = s.create_handler(body, user)
            if not isinstance(result, dict):
                result = await result  # e.g. TokenReview looks objects up
            return json_response(201, result)
        if verb == "create":
            body = self.decode_body(request, s.kind, wo)
            if sub == "binding":
                return await self.bind(s, ns, info.name, body, wo)
            if info.name and not sub:
                raise errors.method_not_allowed("the server does not allow this method on the requested resource")
            obj = await reg.create(s, ns, body, wo)
            return with_warnings(json_response(201, obj), wo)
        if verb == "update":
            body = self.decode_body(request, s.kind, wo)
            if sub == "scale":
                return json_response(200, await self.update_scale(s, ns, info.name, lambda _scale: body, wo))
            obj, created = await reg.update(s, ns, info.name, body, wo, subresource=sub)
            return with_warnings(json_response(201 if created else 200, obj), wo)
        if verb == "patch":
            ctype = request.headers.get("content-type", "")
            force = q.get("force") in ("true", "1")
            if sub == "scale":
                return json_response(200, await self.patch_scale(s, ns, info.name, ctype, request.body, wo))
            obj, created = await reg.patch(s, ns, info.name, ctype, request.body, wo, subresource=sub, force=force)
            return with_warnings(json_response(201 if created else 200, obj), wo)
        if verb == "delete":
            options = self.delete_options(request)
            body, code = await reg.delete(s, ns, info.name, options, wo)
            return json_response(code, body)
        if verb == "deletecollection":
            options = self.delete_options(request)
            return json_response(200, await reg.delete_collection(s, ns, ListOptions.from_query(q), options, wo))
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")

    @staticmethod
    def decode_body(request: Request, kind: str = "Object", wo: WriteOptions | None = None) -> Obj:
        """The request body as an object; with ``wo`` (fieldValidation not Ignore) also its duplicate fields."""
        body = request.body
        ctype = request.headers.get("content-type", "application/json").split(";", 1)[0].strip()
        if ctype == "application/vnd.kubernetes.protobuf":
            from ultraplane.apiserver import protobuf

            try:
                return protobuf.decode_object(body)
            except (protobuf.ProtobufError, KeyError, UnicodeDecodeError) as exc:
                raise ApiError(errors.status(415, "UnsupportedMediaType", str(exc))) from exc
        if ctype not in ("application/json", "application/yaml", "application/apply-patch+yaml", ""):
            raise ApiError(errors.status(415, "UnsupportedMediaType",
                                         'the body of the request was in an unknown format - accepted media types '
                                         'include: application/json, application/yaml, '
                                         'application/vnd.kubernetes.protobuf'))
        from ultraplane.apiserver.strictdecode import go_json_error, summarize

        try:
            if ctype in ("application/yaml", "application/apply-patch+yaml"):
                import yaml

                obj = yaml.safe_load(body)
            else:
                obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            # kube's transformDecodeError, with encoding/json's text and the start of the body
            raise errors.bad_request(f"the object provided is unrecognized (must be of type {kind}): couldn't get "
                                     f"version/kind; json parse error: {go_json_error(body)} "
                                     f"({summarize(body)})") from exc
        except Exception as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise errors.bad_request(f"the object provided is unrecognized (must be of type {kind}): error "
                                     f"converting YAML to JSON: yaml: {where}{problem} ({summarize(body)})") from exc
        if not isinstance(obj, dict):
            raise errors.bad_request(f"the object provided is unrecognized (must be of type {kind})")
        if wo is not None and wo.field_validation != "Ignore" and ctype in ("application/json", ""):
            from ultraplane.apiserver.strictdecode import duplicate_fields

            wo.strict_errors = duplicate_fields(body, obj)
        return obj

    @staticmethod
    def delete_options(request: Request) -> Obj:
        options: Obj = {}
        if request.body:
            try:
                options = orjson.loads(request.body) or {}
            except orjson.JSONDecodeError as exc:
                raise errors.bad_request(f"invalid delete options: {exc}") from exc
        q = request.query
        if "propagationPolicy" in q:
            options["propagationPolicy"] = q["propagationPolicy"]
        if "gracePeriodSeconds" in q:
            options["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        if q.get("dryRun") == "All":
            options["dryRun"] = ["All"]
        return options

    # ---------------------------------------------------------------- encodings
    def encode_object(self, s: Strategy, obj: Obj, accept: str, q: dict[str, str]) -> Response:
        if "as=Table" in accept:
            return json_response(200, self.table(s, [obj], obj["metadata"].get("resourceVersion", ""), q))
        if "as=PartialObjectMetadata" in accept:
            return json_response(200, self.partial(obj, "v1beta1" if "v=v1beta1" in accept else "v1"))
        return json_response(200, obj)

    def encode_list(self, s: Strategy, result: Obj, accept: str, q: dict[str, str]) -> Response:
        if "as=Table" in accept:
            table = self.table(s, result["items"], result["metadata"]["resourceVersion"], q)
            for k in ("continue", "remainingItemCount"):
                if k in result["metadata"]:
                    table["metadata"][k] = result["metadata"][k]
            return json_response(200, table)
        if "as=PartialObjectMetadataList" in accept:
            version = "v1beta1" if "v=v1beta1" in accept else "v1"
            return json_response(200, {"kind": "PartialObjectMetadataList", "apiVersion": f"meta.k8s.io/{version}",
                                       "metadata": result["metadata"],
                                       "items": [self.partial(o, version) for o in result["items"]]})
        return json_response(200, result)

    @staticmethod
    def partial(obj: Obj, version: str = "v1") -> Obj:
        return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}", "metadata": obj["metadata"]}

    def table(self, s: Strategy, items: list[Obj], resource_version: str, q: dict[str, str]) -> Obj:
        from ultraplane.apiserver.resources import AGE, NAME, age

        now = dt.datetime.now(dt.UTC)
        columns = s.columns or [NAME(), AGE()]
        include = q.get("includeObject", "Metadata")
        sort_key = getattr(s, "table_sort", None)  # e.g. FlowSchemas print in the order they match
        if sort_key is not None:
            items = sorted(items, key=sort_key)
        rows = []
        for obj in items:
            cells = s.row(obj, now) if s.row is not None else [obj["metadata"]["name"], age(obj, now)]
            row: Obj = {"cells": cells}
            if include == "Object":
                obj.setdefault("kind", s.kind)
                obj.setdefault("apiVersion", s.api_version)
                row["object"] = obj
            elif include != "None":
                row["object"] = self.partial(obj)
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
                "columnDefinitions": [c.definition() for c in columns], "rows": rows}

    async def table_watch(self, s: Strategy, stream: Any, q: dict[str, str]) -> Any:
        async for chunk in stream:
            out = []
            for line in chunk.splitlines():
                event = orjson.loads(line)
                obj = event["object"]
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    event["object"] = self.table(s, [obj], obj["metadata"].get("resourceVersion", ""), q)
                out.append(orjson.dumps(event) + b"\n")
            yield b"".join(out)

    # ---------------------------------------------------------------- subresources
    async def bind(self, s: Strategy, ns: str, name: str, body: Obj, wo: WriteOptions) -> Response:
        target = (body.get("target") or {}).get("name", "")
        pod_name = (body.get("metadata") or {}).get("name") or name
        if not target:
            raise errors.invalid("Binding", "", pod_name, [{"reason": "FieldValueRequired", "field": "target.name",
                                                           "message": "Required value"}])

        def assign(pod: Obj) -> Obj:
            current = (pod.get("spec") or {}).get("nodeName")
            if current:
                raise errors.conflict("", "pods/binding", pod_name,
                                      f'pod {pod_name} is already assigned to node "{current}"')
            pod["spec"]["nodeName"] = target
            # kube-apiserver's setPodNodeAndMetadata: the binding's annotations are copied onto the pod, and
            # PodScheduled becomes True
            extra = (body.get("metadata") or {}).get("annotations")
            if isinstance(extra, dict) and extra:
                pod["metadata"].setdefault("annotations", {}).update(extra)
            status = pod.get("status")
            if not isinstance(status, dict):
                status = pod["status"] = {}
            conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
            scheduled = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
            if scheduled is None:
                conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                   "lastTransitionTime": now_rfc3339()})
            elif scheduled.get("status") != "True":
                scheduled.update({"status": "True", "lastTransitionTime": now_rfc3339()})
                scheduled.pop("reason", None)
                scheduled.pop("message", None)
            status["conditions"] = conditions
            # (ClearingNominatedNodeNameAfterBinding, on by default since 1.35): a bound pod's nomination is
            # stale, whoever set it
            status.pop("nominatedNodeName", None)
            return pod

        await self.registry.guaranteed_update(s, ns, pod_name, assign, wo, writes_status=True)
        return json_response(201, errors.success_status())

    def scale_of(self, s: Strategy, obj: Obj) -> Obj:
        spec_path, status_path, selector_path = s.scale_path
        from ultraplane.apiserver.resources import format_selector

        selector = get_path(obj, selector_path)
        meta = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                             "resourceVersion": meta.get("resourceVersion"),
                             "creationTimestamp": meta.get("creationTimestamp")},
                "spec": {"replicas": get_path(obj, spec_path) or 0},
                "status": {"replicas": get_path(obj, status_path) or 0,
                           # custom resources keep the selector as a string (labelSelectorPath)
                           "selector": selector if isinstance(selector, str)
                           else format_selector(selector).replace("<none>", "")}}

    async def update_scale(self, s: Strategy, ns: str, name: str, change: Any, wo: WriteOptions) -> Obj:
        result: dict[str, Obj] = {}

        def mutate(obj: Obj) -> Obj:
            scale = change(self.scale_of(s, obj))
            if not isinstance(scale, dict):
                raise errors.bad_request("invalid scale")
            replicas = (scale.get("spec") or {}).get("replicas")
            rv = (scale.get("metadata") or {}).get("resourceVersion")
            if rv and rv != obj["metadata"]["resourceVersion"]:
                raise errors.conflict(s.group, s.plural, name, errors.MODIFIED)
            if not isinstance(replicas, int) or replicas < 0:
                raise errors.invalid("Scale", "autoscaling", name, [{
                    "reason": "FieldValueInvalid", "field": "spec.replicas",
                    "message": f"Invalid value: {replicas}: must be greater than or equal to 0"}])
            set_path(obj, s.scale_path[0], replicas)
            return obj

        obj = await self.registry.guaranteed_update(s, ns, name, mutate, wo)
        result["scale"] = self.scale_of(s, obj)
        return result["scale"]

    async def patch_scale(self, s: Strategy, ns: str, name: str, ctype: str, body: bytes, wo: WriteOptions) -> Obj:
        from ultraplane.apiserver import patch as patchlib

        document = orjson.loads(body)
        kind = ctype.split(";", 1)[0].strip()

        def change(scale: Obj) -> Obj:
            if kind == "application/json-patch+json":
                return patchlib.json_patch(scale, document)
            return patchlib.merge_patch(scale, document)

        return await self.update_scale(s, ns, name, change, wo)

