"""The aggregation layer (kube-aggregator): APIServices, their Available condition, and proxying.

* ``apiregistration.k8s.io/v1`` APIService is an ordinary strategy (kube's validation, defaults and
  table), stored at kube's key ``/registry/apiregistration.k8s.io/apiservices/<name>``.
* Local APIServices: at start (and when CRDs come and go) every served group/version gets its
  ``<version>.<group>`` APIService without a service, as kube-apiserver's autoregister and
  crdregistration controllers create them: built-in ones labelled ``automanaged: onstart`` with kube's
  group/version priorities, CRD ones ``automanaged: "true"`` with priorities 1000/100.
* ``AvailabilityController`` keeps each APIService's ``Available`` condition as kube's
  available-condition controller does: local ones are always available; a service-backed one needs
  its Service (and the port), endpoints with an address for that port, and a 2xx answer to
  ``GET /apis/<group>/<version>`` from one of them.
* Requests for a service-backed group/version (resources and its discovery document) are proxied to
  an endpoint of the service (kube's ``--enable-aggregator-routing`` resolution: ClusterIPs are not
  routable from the API server here) over TLS verified with ``caBundle`` (server name
  ``<service>.<namespace>.svc``) or not at all with ``insecureSkipTLSVerify``. The API server
  authenticates with its front-proxy client certificate and passes the user on as kube does
  (``X-Remote-User``, ``X-Remote-Group``, ``X-Remote-Extra-<key>``); the client's own credentials
  are not forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from ultraplane.apiserver import errors, validation
from ultraplane.apiserver.registry import Column, ListOptions, Obj, Registry, Strategy, WriteOptions
from ultraplane.apiserver.server import Request, Response

log = logging.getLogger("ultraplane.apiserver.aggregator")

GROUP = "apiregistration.k8s.io"
AUTOMANAGED = "kube-aggregator.kubernetes.io/automanaged"
CHECK_INTERVAL = 1.0  # how often the controller looks at the APIServices (a list of a few dozen objects)
PROBE_INTERVAL = 10.0  # how often a service-backed APIService's discovery document is fetched again
PROBE_TIMEOUT = 5.0
# kube-apiserver's apiVersionPriorities (cmd/kube-apiserver/app/aggregator.go): (group, version) ->
# (groupPriorityMinimum, versionPriority); a served group/version not listed gets no APIService
PRIORITIES: dict[tuple[str, str], tuple[int, int]] = {
    ("", "v1"): (18000, 1),
    ("apps", "v1"): (17800, 15),
    ("events.k8s.io", "v1"): (17750, 15),
    ("authentication.k8s.io", "v1"): (17700, 15),
    ("authorization.k8s.io", "v1"): (17600, 15),
    ("autoscaling", "v1"): (17500, 15),
    ("autoscaling", "v2"): (17500, 30),
    ("batch", "v1"): (17400, 15),
    ("certificates.k8s.io", "v1"): (17300, 15),
    ("networking.k8s.io", "v1"): (17200, 15),
    ("policy", "v1"): (17100, 15),
    ("rbac.authorization.k8s.io", "v1"): (17000, 15),
    ("storage.k8s.io", "v1"): (16800, 15),
    ("apiextensions.k8s.io", "v1"): (16700, 15),
    ("admissionregistration.k8s.io", "v1"): (16700, 15),
    ("scheduling.k8s.io", "v1"): (16600, 15),
    ("coordination.k8s.io", "v1"): (16500, 15),
    ("node.k8s.io", "v1"): (16300, 15),
    ("discovery.k8s.io", "v1"): (16200, 15),
    ("flowcontrol.apiserver.k8s.io", "v1"): (16100, 21),
}
LOCAL_MESSAGE = "Local APIServices are always available"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
                "proxy-authenticate", "content-length", "host", "authorization"}


def apiservice_name(group: str, version: str) -> str:
    return f"{version}.{group}"


# ------------------------------------------------------------------------------------------ strategy
def apiservice_defaults(obj: Obj) -> None:
    service = (obj.get("spec") or {}).get("service")
    if isinstance(service, dict) and service.get("port") is None:
        service["port"] = 443  # SetDefaults_ServiceReference


def apiservice_validate(obj: Obj, old: Obj | None) -> list[validation.Cause]:
    """kube-aggregator's ValidateAPIService (pkg/apis/apiregistration/validation)."""
    spec = obj.get("spec") or {}
    group, version = str(spec.get("group") or ""), str(spec.get("version") or "")
    causes: list[validation.Cause] = []
    name = (obj.get("metadata") or {}).get("name") or ""
    required_name = f"{version}.{group}"
    if name and not validation.path_segment_errors(name) and name != required_name:
        causes.append(validation.invalid("metadata.name", name,
                                         f'must be `spec.version+"."+spec.group`: "{required_name}"'))
    if not group and version != "v1":
        causes.append(validation.required("spec.group", "only v1 may have an empty group and it better be legacy "
                                          "kube"))
    if group:
        causes += [validation.invalid("spec.group", group, e) for e in validation.dns1123_subdomain_errors(group)]
    causes += [validation.invalid("spec.version", version, e) for e in _dns1035_label_errors(version)]
    group_priority = spec.get("groupPriorityMinimum") or 0
    if not isinstance(group_priority, int) or not 0 < group_priority <= 20000:
        causes.append(validation.invalid("spec.groupPriorityMinimum", group_priority,
                                         "must be positive and less than 20000"))
    version_priority = spec.get("versionPriority") or 0
    if not isinstance(version_priority, int) or not 0 < version_priority <= 1000:
        causes.append(validation.invalid("spec.versionPriority", version_priority,
                                         "must be positive and less than 1000"))
    ca_bundle = spec.get("caBundle") or ""
    insecure = bool(spec.get("insecureSkipTLSVerify"))
    service = spec.get("service")
    if not isinstance(service, dict):
        if ca_bundle:
            causes.append(validation.invalid("spec.caBundle", f"{len(_ca_bytes(ca_bundle))} bytes",
                                             "local APIServices may not have a caBundle"))
        if insecure:
            causes.append(validation.invalid("spec.insecureSkipTLSVerify", True,
                                             "local APIServices may not have insecureSkipTLSVerify"))
        return causes
    if not service.get("namespace"):
        causes.append(validation.required("spec.service.namespace"))
    if not service.get("name"):
        causes.append(validation.required("spec.service.name"))
    port = service.get("port")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        causes.append(validation.invalid("spec.service.port", port,
                                         "port is not valid: must be between 1 and 65535, inclusive"))
    if insecure and ca_bundle:
        causes.append(validation.invalid("spec.insecureSkipTLSVerify", True, "may not be true if caBundle is present"))
    return causes


def _dns1035_label_errors(value: str) -> list[str]:
    import re

    out = []
    if len(value) > 63:
        out.append("must be no more than 63 characters")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", value):
        out.append("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                   "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                   "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
    return out


def _ca_bytes(ca_bundle: str) -> bytes:
    try:
        return base64.b64decode(ca_bundle, validate=True)
    except ValueError:
        return ca_bundle.encode()


def available_condition(obj: Obj) -> Obj | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Available"),
                None)


def apiservice_row(obj: Obj, now: dt.datetime) -> list[Any]:
    from ultraplane.apiserver.resources import age

    service = (obj.get("spec") or {}).get("service")
    where = f"{service.get('namespace', '')}/{service.get('name', '')}" if isinstance(service, dict) else "Local"
    cond = available_condition(obj)
    if cond is None:
        available = "Unknown"
    elif cond.get("status") == "True":
        available = "True"
    else:
        available = f"{cond.get('status', 'Unknown')} ({cond.get('reason', '')})"
    return [obj["metadata"]["name"], where, available, age(obj, now)]


def reset_status(obj: Obj) -> None:
    obj.pop("status", None)


def apiservice_strategy() -> Strategy:
    from ultraplane.apiserver.resources import AGE, NAME

    return Strategy(GROUP, "v1", "APIService", "apiservices", "apiservice", namespaced=False,
                    storage="apiregistration.k8s.io/apiservices", subresources=("status",),
                    categories=["api-extensions"], name_rule="pathsegment", defaults=apiservice_defaults,
                    validate=apiservice_validate, prepare_create=reset_status,
                    columns=[NAME(), Column("Service"), Column("Available"), AGE()], row=apiservice_row)


# ------------------------------------------------------------------------------------------ local APIServices
def local_apiservice(group: str, version: str, custom: bool) -> Obj | None:
    if custom:
        priorities, label = (1000, 100), "true"
    else:
        found = PRIORITIES.get((group, version))
        if found is None:
            return None
        priorities, label = found, "onstart"
    return {"apiVersion": f"{GROUP}/v1", "kind": "APIService",
            "metadata": {"name": apiservice_name(group, version), "labels": {AUTOMANAGED: label}},
            "spec": {"group": group, "version": version, "groupPriorityMinimum": priorities[0],
                     "versionPriority": priorities[1]}}


def _condition(status: str, reason: str, message: str, previous: Obj | None) -> Obj:
    when = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    return {"type": "Available", "status": status,
            "lastTransitionTime": when or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": reason, "message": message}


class Unavailable(Exception):
    """A service-backed APIService that cannot be reached: (reason, message) of its condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Aggregator:
    WO = WriteOptions(field_manager="kube-apiserver")

    def __init__(self, registry: Registry, proxy_cert: str, proxy_key: str) -> None:
        self.registry = registry
        self.strategy = registry.strategies[(GROUP, "v1", "apiservices")]
        self.proxy_cert = proxy_cert
        self.proxy_key = proxy_key
        self.remote: dict[tuple[str, str], Obj] = {}  # service-backed APIServices by (group, version)
        self.discovered: dict[tuple[str, str], Obj] = {}  # their last APIResourceList
        self.probed: dict[str, tuple[str, float]] = {}  # name -> (resourceVersion, monotonic time)
        self.listeners: list[Callable[[], None]] = []  # discovery changed
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}
        self._session: Any = None

    # -------------------------------------------------------------- local APIServices
    async def sync_local(self) -> None:
        """The local APIServices of what this server serves (kube's autoregister + crdregistration)."""
        served: dict[tuple[str, str], bool] = {}
        for (group, version, _plural), s in list(self.registry.strategies.items()):
            served[(group, version)] = served.get((group, version), False) or s.custom
        existing = {o["metadata"]["name"]: o for o in await self._list()}
        for (group, version), custom in served.items():
            wanted = local_apiservice(group, version, custom)
            if wanted is None:
                continue
            name = wanted["metadata"]["name"]
            current = existing.get(name)
            try:
                if current is None:
                    await self.registry.create(self.strategy, "", wanted, self.WO)
                elif (current.get("metadata", {}).get("labels") or {}).get(AUTOMANAGED) and \
                        current.get("spec") != wanted["spec"]:
                    body = {**current, "spec": wanted["spec"]}
                    await self.registry.update(self.strategy, "", name, body, self.WO)
            except errors.ApiError as exc:
                if exc.code != 409:
                    raise
        for name, obj in existing.items():  # a CRD version that went: its automanaged APIService goes too
            spec = obj.get("spec") or {}
            if (obj["metadata"].get("labels") or {}).get(AUTOMANAGED) == "true" and \
                    (spec.get("group", ""), spec.get("version", "")) not in served:
                try:
                    await self.registry.delete(self.strategy, "", name, {}, self.WO)
                except errors.ApiError as exc:
                    if exc.code != 404:
                        raise

    async def _list(self) -> list[Obj]:
        return list((await self.registry.list(self.strategy, "", ListOptions()))["items"])

    # -------------------------------------------------------------- availability
    async def run(self) -> None:
        while True:
            try:
                await self.check_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("APIService availability check failed")
            await asyncio.sleep(CHECK_INTERVAL)

    async def check_all(self) -> None:
        loop = asyncio.get_running_loop()
        items = await self._list()
        remote: dict[tuple[str, str], Obj] = {}
        for obj in items:
            spec = obj.get("spec") or {}
            gv = (str(spec.get("group") or ""), str(spec.get("version") or ""))
            previous = available_condition(obj)
            if not isinstance(spec.get("service"), dict):
                cond = _condition("True", "Local", LOCAL_MESSAGE, previous)
            else:
                remote[gv] = obj
                name, rv = obj["metadata"]["name"], obj["metadata"].get("resourceVersion", "")
                last = self.probed.get(name)
                if last is not None and last[0] == rv and loop.time() - last[1] < PROBE_INTERVAL:
                    continue
                self.probed[name] = (rv, loop.time())
                try:
                    self.discovered[gv] = await self.probe(obj)
                    cond = _condition("True", "Passed", "all checks passed", previous)
                except Unavailable as exc:
                    self.discovered.pop(gv, None)
                    cond = _condition("False", exc.reason, str(exc), previous)
            if previous is None or any(previous.get(k) != cond[k] for k in ("status", "reason", "message")):
                await self._write_condition(obj["metadata"]["name"], cond)
                # the proxy decides from this copy: it must not wait for the next look to see the change
                status = obj.setdefault("status", {})
                status["conditions"] = [*(c for c in status.get("conditions") or [] if c.get("type") != "Available"),
                                        cond]
        if {gv: o["metadata"]["uid"] for gv, o in remote.items()} != \
                {gv: o["metadata"]["uid"] for gv, o in self.remote.items()}:
            self.remote = remote
            for listener in self.listeners:
                listener()
        else:
            self.remote = remote

    async def _write_condition(self, name: str, cond: Obj) -> None:
        def mutate(current: Obj) -> Obj:
            status = current.setdefault("status", {})
            others = [c for c in status.get("conditions") or [] if c.get("type") != "Available"]
            status["conditions"] = [*others, cond]
            return current

        try:
            await self.registry.guaranteed_update(self.strategy, "", name, mutate, self.WO, subresource="status")
        except errors.ApiError as exc:
            if exc.code != 404:
                raise

    async def probe(self, apiservice: Obj) -> Obj:
        """kube's discovery check: GET /apis/<group>/<version> from an endpoint answers 2xx."""
        spec = apiservice["spec"]
        host, port = await self.resolve(spec["service"])
        path = f"/apis/{spec['group']}/{spec['version']}" if spec.get("group") else f"/api/{spec['version']}"
        url = f"https://{_host(host)}:{port}{path}"
        import aiohttp

        try:
            async with self.session().get(url, ssl=self.context(spec), server_hostname=self._server_name(spec),
                                          headers={"X-Remote-User": "system:kube-aggregator",
                                                   "X-Remote-Group": "system:masters",
                                                   "Accept": "application/json"},
                                          timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as resp:
                body = await resp.read()
                if not 200 <= resp.status < 300:
                    raise Unavailable("FailedDiscoveryCheck", f"failing or missing response from {url}: bad status "
                                      f"from {url}: {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unavailable("FailedDiscoveryCheck", f"failing or missing response from {url}: "
                                                      f"{exc or type(exc).__name__}") from exc
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = {}
        return parsed if isinstance(parsed, dict) else {}

    async def resolve(self, service: Obj) -> tuple[str, int]:
        """An endpoint of the service for its port (kube's ResolveEndpoint)."""
        ns, name, port = service.get("namespace", ""), service.get("name", ""), int(service.get("port") or 443)
        services = self.registry.strategies[("", "v1", "services")]
        try:
            svc = await self.registry.get(services, ns, name)
        except errors.ApiError as exc:
            raise Unavailable("ServiceNotFound", f'service/{name} in "{ns}" is not present') from exc
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            return str(spec.get("externalName", "")), port
        svc_port = next((p for p in spec.get("ports") or [] if p.get("port") == port), None)
        if svc_port is None:
            raise Unavailable("ServicePortError", f'service/{name} in "{ns}" is not listening on port {port}')
        endpoints = self.registry.strategies[("", "v1", "endpoints")]
        try:
            eps = await self.registry.get(endpoints, ns, name)
        except errors.ApiError as exc:
            raise Unavailable("EndpointsNotFound", f'cannot find endpoints for service/{name} in "{ns}"') from exc
        port_name = svc_port.get("name", "")
        choices: list[tuple[str, int]] = []
        for subset in eps.get("subsets") or []:
            for p in subset.get("ports") or []:
                if p.get("name", "") == port_name:
                    choices += [(a["ip"], int(p["port"])) for a in subset.get("addresses") or [] if a.get("ip")]
        if not choices:
            raise Unavailable("MissingEndpoints", f'endpoints for service/{name} in "{ns}" have no addresses with '
                                                  f'port name "{port_name}"')
        return random.choice(choices)

    def session(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def context(self, spec: Obj) -> ssl.SSLContext:
        key = (str(spec.get("caBundle") or ""), bool(spec.get("insecureSkipTLSVerify")))
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            ctx.load_cert_chain(self.proxy_cert, self.proxy_key)
            if key[1]:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif key[0]:  # without a caBundle the system's roots verify, as Go's TLS does
                ctx.load_verify_locations(cadata=_ca_bytes(key[0]).decode("latin-1"))
            self._contexts[key] = ctx
        return ctx

    @staticmethod
    def _server_name(spec: Obj) -> str | None:
        if spec.get("insecureSkipTLSVerify"):
            return None
        service = spec.get("service") or {}
        return f"{service.get('name', '')}.{service.get('namespace', '')}.svc"

    # -------------------------------------------------------------- discovery
    def groups(self) -> dict[str, list[str]]:
        """Aggregated groups and their versions, best version first (versionPriority, then kube's order)."""
        from ultraplane.apiserver.crd import version_priority

        by_group: dict[str, list[Obj]] = {}
        for (group, _version), obj in self.remote.items():
            by_group.setdefault(group, []).append(obj)
        out = {}
        for group, objs in by_group.items():
            objs.sort(key=lambda o: (-int(o["spec"].get("versionPriority") or 0),
                                     version_priority(o["spec"].get("version", ""))))
            out[group] = [o["spec"]["version"] for o in objs]
        return out

    def discovery_v2_versions(self, group: str) -> list[Obj]:
        entries = []
        for version in self.groups().get(group, []):
            listing = self.discovered.get((group, version))
            resources = []
            for r in (listing or {}).get("resources") or []:
                if "/" in r.get("name", ""):
                    continue
                resources.append({"resource": r["name"], "responseKind": {"group": r.get("group", group),
                                                                          "version": r.get("version", version),
                                                                          "kind": r.get("kind", "")},
                                  "scope": "Namespaced" if r.get("namespaced") else "Cluster",
                                  "singularResource": r.get("singularName", ""), "verbs": r.get("verbs") or []})
            entries.append({"version": version, "resources": resources,
                            "freshness": "Current" if listing is not None else "Stale"})
        return entries

    # -------------------------------------------------------------- proxy
    def backing(self, group: str, version: str) -> Obj | None:
        return self.remote.get((group, version))

    async def proxy(self, request: Request, user: Any, apiservice: Obj) -> Response:
        import aiohttp

        cond = available_condition(apiservice)
        if cond is None or cond.get("status") != "True":  # kube proxies only to an available APIService
            return _unavailable()
        spec = apiservice["spec"]
        try:
            host, port = await self.resolve(spec["service"])
        except Unavailable:
            return _unavailable()
        query = ("?" + urlencode(request.query)) if request.query else ""
        url = f"https://{_host(host)}:{port}{quote(request.path)}{query}"
        headers = [(k, v) for k, v in request.headers.items()
                   if k not in _HOP_HEADERS and not k.startswith(("impersonate-", "x-remote-"))]
        headers.append(("X-Remote-User", user.name))
        headers += [("X-Remote-Group", g) for g in user.groups]
        for key, values in (getattr(user, "extra", None) or {}).items():
            headers += [(f"X-Remote-Extra-{quote(key, safe='')}", v) for v in values]
        session = self.session()
        try:
            resp = await session.request(request.method, url, data=request.body or None, headers=headers,
                                         ssl=self.context(spec), server_hostname=self._server_name(spec),
                                         allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_connect=PROBE_TIMEOUT))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            status = errors.status(503, "ServiceUnavailable", f"error trying to reach service: {exc}")
            return Response(503, orjson.dumps(status, option=orjson.OPT_APPEND_NEWLINE))
        out_headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS
                       and k.lower() != "content-type"]
        content_type = resp.headers.get("Content-Type", "application/json")
        if resp.headers.get("Content-Length") is not None:
            body = await resp.read()
            resp.release()
            return Response(resp.status, body, content_type, out_headers)
        return Response(resp.status, content_type=content_type, headers=out_headers, stream=_relay(resp))


async def _relay(resp: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        resp.release()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unavailable() -> Response:
    # kube's proxyError: http.Error's plain text
    return Response(503, b"service unavailable\n", "text/plain; charset=utf-8",
                    [("X-Content-Type-Options", "nosniff")])
