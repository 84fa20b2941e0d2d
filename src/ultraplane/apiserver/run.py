"""Starting an API server: PKI and kubeconfig, registry with the built-in resources, bootstrap objects.

Used by ``ultraplane up`` (in-process store) and ``ultraplane apiserver`` (remote etcd endpoints).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from ultraplane import pki
from ultraplane.apiserver import (
    aggregator,
    crd,
    errors,
    flowcontrol,
    nodeauthz,
    noderestriction,
    podlogs,
    policy,
    priority,
    rbac,
    rbac_api,
    rbac_controller,
    satokens,
    servicealloc,
)
from ultraplane.apiserver.app import ApiServer, load_token_file
from ultraplane.apiserver.encryption import EncryptionConfig
from ultraplane.apiserver.kubeletlogs import KubeletLogSource
from ultraplane.apiserver.registry import ListOptions, Registry, WriteOptions
from ultraplane.apiserver.resources import (
    ClusterIPAllocator,
    bootstrap_namespace,
    builtin_strategies,
    kubernetes_service,
)
from ultraplane.apiserver.server import serve_http
from ultraplane.apiserver.storage import Backend
from ultraplane.apiserver.streaming import PodStreams

log = logging.getLogger("ultraplane.apiserver")

BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ADMIN_USER = "kubernetes-admin"


@dataclass
class ApiserverPki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path | None = None  # the service-account token signing key (sa.key; sa.pub beside it)
    # kube's --proxy-client-cert-file/--proxy-client-key-file: how the aggregator authenticates to
    # aggregated API servers (issued by the cluster CA; kube uses a separate front-proxy CA)
    proxy_cert: Path | None = None
    proxy_key: Path | None = None


def ensure_pki(pki_dir: Path, host: str, service_ip: str) -> ApiserverPki:
    ca = pki.ensure_ca(pki_dir)
    hosts = sorted({host, "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local", service_ip})
    serving = pki.issue(ca, pki_dir, "apiserver", "kube-apiserver", server_hosts=hosts)
    admin = pki.issue(ca, pki_dir, "admin", ADMIN_USER, client=True, organizations=["system:masters"])
    proxy = pki.issue(ca, pki_dir, "front-proxy-client", "front-proxy-client", client=True)
    return ApiserverPki(ca.cert, serving.cert, serving.key, admin.cert, admin.key,
                        satokens.ensure_signing_key(pki_dir), proxy.cert, proxy.key)


def write_kubeconfig(path: Path, server: str, files: ApiserverPki) -> None:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    text = f"""apiVersion: v1
kind: Config
clusters:
- name: ultraplane
  cluster:
    server: {server}
    certificate-authority-data: {b64(files.ca_cert)}
users:
- name: {ADMIN_USER}
  user:
    client-certificate-data: {b64(files.admin_cert)}
    client-key-data: {b64(files.admin_key)}
contexts:
- name: {ADMIN_USER}@ultraplane
  context:
    cluster: ultraplane
    user: {ADMIN_USER}
current-context: {ADMIN_USER}@ultraplane
preferences: {{}}
"""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def serving_context(files: ApiserverPki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.serving_cert), str(files.serving_key))
    ctx.load_verify_locations(str(files.ca_cert))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # certificates authenticate; tokens (or anonymous) otherwise
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass
class ApiserverConfig:
    host: str = "127.0.0.1"
    port: int = 6443
    service_cidr: str = "10.96.0.0/12"
    token_file: str | None = None
    anonymous: bool = False
    overrides: dict[str, Backend] = field(default_factory=dict)
    compaction_interval: float = 300.0
    tier: str = "standard"  # capacity tier (flowcontrol.TIERS): the seats API Priority and Fairness shares out
    max_requests_inflight: int = 0  # kube's flags; when given, their sum fixes the seats
    max_mutating_requests_inflight: int = 0
    priority_and_fairness: bool = True  # kube's --enable-priority-and-fairness
    encryption: EncryptionConfig | None = None  # kube's --encryption-provider-config
    # kube's --service-account-issuer (first signs), --service-account-key-file, --service-account-signing-key-file
    # and --api-audiences; without files the API server uses DATA_DIR/pki/sa.key
    service_account_issuers: list[str] = field(default_factory=list)
    service_account_key_files: list[str] = field(default_factory=list)
    service_account_signing_key_file: str | None = None
    api_audiences: list[str] = field(default_factory=list)
    service_account_max_token_expiration: int = 0  # seconds; 0: as requested
    service_account_extend_token_expiration: bool = True
    service_account_jwks_uri: str = ""
    namespace_cleanup: bool = True  # empty Terminating namespaces in-process (off when a namespace controller runs)


class RunningApiserver:
    def __init__(self, registry: Registry, app: ApiServer, listener: asyncio.Server,
                 background: list[asyncio.Task[None]] | None = None) -> None:
        self.registry = registry
        self.app = app
        self.listener = listener
        self.background = background or []
        self.log_source: podlogs.LogSource | None = None  # where pods/log reads (a node simulator writes)

    async def stop(self) -> None:
        self.listener.close()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.app.aggregator is not None:
            await self.app.aggregator.close()
        await self.registry.close()


async def start_apiserver(backend: Backend, cfg: ApiserverConfig, files: ApiserverPki) -> RunningApiserver:
    registry = Registry(backend, cfg.overrides, compaction_interval=cfg.compaction_interval)
    registry.encryption = cfg.encryption
    registry.namespace_cleanup = cfg.namespace_cleanup
    authz = rbac.RbacAuthorizer()
    for strategy in [*builtin_strategies(), *flowcontrol.strategies(), policy.pdb_strategy(), crd.crd_strategy(),
                     *rbac_api.strategies(authz), aggregator.apiservice_strategy()]:
        registry.register(strategy)
    disruption = policy.install(registry)
    priorities = priority.install(registry)  # kube's Priority admission plugin and PriorityClass validation
    signing_key = cfg.service_account_signing_key_file or (str(files.sa_key) if files.sa_key else None)
    authenticator, sa_tokens = satokens.install(
        registry, tokens=load_token_file(cfg.token_file), anonymous=cfg.anonymous,
        issuers=cfg.service_account_issuers, key_files=cfg.service_account_key_files, signing_key_file=signing_key,
        api_audiences=cfg.api_audiences, extend_expiration=cfg.service_account_extend_token_expiration,
        max_expiration=cfg.service_account_max_token_expiration)
    allocator = ClusterIPAllocator(cfg.service_cidr)
    service_alloc = install_service_admission(registry, cfg.service_cidr)
    await registry.start()
    app = ApiServer(registry, tokens=authenticator.tokens, anonymous=cfg.anonymous,
                    address=f"{cfg.host}:{cfg.port}", authenticator=authenticator)
    # kube's --enable-admission-plugins=NodeRestriction: what a kubelet writes must be its own
    restriction = noderestriction.NodeRestriction(registry)
    registry.write_admission.append(restriction.check)
    app.subresource_handlers[("serviceaccounts", "token")] = restriction.guard_token_request(
        sa_tokens.serve_token_request)
    app.path_handlers.update(satokens.openid_handlers(sa_tokens.keys, f"{cfg.host}:{cfg.port}",
                                                      cfg.service_account_jwks_uri))
    await asyncio.get_running_loop().run_in_executor(None, app.load_schemas)
    crds = await crd.install(registry, app)  # stored CRDs are served before the first request
    log_source = podlogs.MemoryLogSource()
    # kube-apiserver proxies to the node's kubelet; nodes without one read the in-memory source
    kubelet_logs = KubeletLogSource(registry, log_source, files.admin_cert, files.admin_key)
    app.subresource_handlers[("pods", "log")] = podlogs.PodLogs(registry, kubelet_logs).serve
    # pods/exec, attach, portforward: the upgrade request proxied to the kubelet (streaming.py)
    PodStreams(registry, files.admin_cert, files.admin_key).install(app.subresource_handlers)
    app.subresource_handlers[("pods", "eviction")] = restriction.guard_eviction(disruption.serve)
    await bootstrap(registry, allocator, cfg.host, cfg.port)
    # the aggregation layer: local APIServices of what is served, availability, proxying
    agg = aggregator.Aggregator(registry, str(files.proxy_cert or files.admin_cert),
                                str(files.proxy_key or files.admin_key))
    await agg.sync_local()
    await agg.check_all()
    app.aggregator = agg
    agg.listeners.append(app.resources_changed)
    crds.listeners.append(lambda: asyncio.ensure_future(agg.sync_local()))
    await priority.bootstrap(registry)  # kube's scheduling/bootstrap-system-priority-classes hook
    priority_task = await priorities.start()  # the classes pod creates read, kept from the watch cache
    rbac_task = await rbac_controller.start_rbac(registry, authz)  # kube's rbac/bootstrap-roles hook
    # kube's --authorization-mode=Node,RBAC: the Node authorizer's graph is loaded before the first request
    authz.node, node_graph_task = await nodeauthz.start_node_authorizer(registry)
    app.authorizer = authz
    flow = await start_flowcontrol(registry, cfg)
    if cfg.priority_and_fairness:
        app.flowcontrol = flow
    background = [asyncio.ensure_future(flow.run(registry)), asyncio.ensure_future(authenticator.run()),
                  asyncio.ensure_future(satokens.LegacyTokenController(registry, sa_tokens,
                                                                       files.ca_cert.read_bytes()).run())]
    background += [rbac_task, node_graph_task, priority_task, asyncio.ensure_future(agg.run())]
    await service_alloc.repair()  # kube's repair controllers run once before serving, then periodically
    background.append(asyncio.ensure_future(service_alloc.run_repair()))
    if crds.task is not None:
        background.append(crds.task)
    listener = await serve_http(app.handle, cfg.host, cfg.port, serving_context(files))
    log.info("API server serving on https://%s:%d (tier %s, %d seats)", cfg.host, cfg.port, flow.tier.name,
             flow.tier.seats)
    running = RunningApiserver(registry, app, listener, background)
    running.log_source = log_source
    return running


async def start_flowcontrol(registry: Registry, cfg: ApiserverConfig) -> flowcontrol.FlowControl:
    """The APF objects (created when missing) and a dispatcher configured from them before serving."""
    tier = flowcontrol.make_tier(cfg.tier, cfg.max_requests_inflight, cfg.max_mutating_requests_inflight)
    await flowcontrol.ensure_bootstrap(registry)
    flow = flowcontrol.FlowControl(tier)
    fs = registry.strategies[(flowcontrol.GROUP, "v1", "flowschemas")]
    pl = registry.strategies[(flowcontrol.GROUP, "v1", "prioritylevelconfigurations")]
    flow.configure((await registry.list(fs, "", ListOptions()))["items"],
                   (await registry.list(pl, "", ListOptions()))["items"])
    return flow


def install_service_admission(registry: Registry, cidr: str) -> servicealloc.ServiceAllocator:
    """ClusterIPs and NodePorts reserved in the store on create, released on delete (servicealloc.py)."""
    allocator = servicealloc.ServiceAllocator(registry, cidr)
    registry.admission["services"] = allocator.allocate
    registry.update_admission["services"] = allocator.allocate_update
    registry.on_deleted["services"] = allocator.release
    return allocator


async def bootstrap(registry: Registry, allocator: ClusterIPAllocator, host: str, port: int) -> None:
    """What kube-apiserver's bootstrap controllers create: system namespaces and the kubernetes service."""
    wo = WriteOptions(field_manager="kube-apiserver")
    namespaces = registry.strategies[("", "v1", "namespaces")]
    for name in BOOTSTRAP_NAMESPACES:
        try:
            await registry.create(namespaces, "", bootstrap_namespace(name), wo)
        except errors.ApiError as exc:
            if exc.code != 409:
                raise
    services = registry.strategies[("", "v1", "services")]
    try:
        await registry.get(services, "default", "kubernetes")
    except errors.ApiError as exc:
        if exc.code != 404:
            raise
        await registry.create(services, "default", kubernetes_service(allocator.first(), port), wo)
    # the endpoints of the kubernetes service: this API server (kube's endpoint reconciler)
    endpoints = registry.strategies[("", "v1", "endpoints")]
    address = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    body = {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port,
                                                                     "protocol": "TCP"}]}]}
    try:
        current = await registry.get(endpoints, "default", "kubernetes")
        if current.get("subsets") != body["subsets"]:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await registry.update(endpoints, "default", "kubernetes", body, wo)
    except errors.ApiError as exc:
        if exc.code != 404:
            raise
        await registry.create(endpoints, "default", body, wo)
