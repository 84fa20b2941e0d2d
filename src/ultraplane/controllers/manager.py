"""The controller manager: every registered controller over one shared InformerFactory.

As kube-controller-manager: `--controllers` picks controllers by name ('*' is every controller on by
default, 'foo' turns one on, '-foo' turns one off; kube's short aliases such as `garbagecollector` are
accepted), all controllers share one informer per collection, and the informers are started and synced
before any controller works. The registry maps each name to a factory; workload controllers written in
other modules are imported lazily and tolerated when their module is not there (see `missing`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ultraplane.client.http import KubeClient
from ultraplane.controllers.base import InformerFactory

log = logging.getLogger("ultraplane.controllers.manager")
RESTART_DELAY_S = 1.0


class Runnable(Protocol):
    def run(self, stop: asyncio.Event) -> Awaitable[None]: ...


@dataclass
class ManagerOptions:
    """kube-controller-manager flags that individual controllers read."""

    node_monitor_grace_period: float = 40.0
    node_monitor_period: float = 5.0
    node_eviction_rate: float = 0.1  # nodes/s tainted NoExecute per zone (kube's --node-eviction-rate)
    secondary_node_eviction_rate: float = 0.01  # in partially disrupted large zones
    unhealthy_zone_threshold: float = 0.55
    large_cluster_size_threshold: int = 50
    terminated_pod_gc_threshold: int = 12500
    root_ca: bytes = b""  # PEM published as kube-root-ca.crt in every namespace
    extra: dict[str, Any] = field(default_factory=dict)


Factory = Callable[[KubeClient, InformerFactory, ManagerOptions], Runnable]

# name -> (module, attribute, aliases); the attribute is a Controller class taking (client, informers)
# or a function taking (client, informers, options).
_ENTRIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "namespace-controller": ("namespace", "NamespaceController", ("namespace",)),
    "serviceaccount-controller": ("serviceaccount", "ServiceAccountController", ("serviceaccount",)),
    "root-ca-certificate-publisher-controller": ("serviceaccount", "root_ca_publisher", ("root-ca-cert-publisher",)),
    "garbage-collector-controller": ("garbagecollector", "garbage_collector", ("garbagecollector",)),
    "endpoints-controller": ("endpoints", "EndpointsController", ("endpoint",)),
    "endpointslice-controller": ("endpointslice", "EndpointSliceController", ("endpointslice",)),
    "node-lifecycle-controller": ("nodelifecycle", "node_lifecycle", ("nodelifecycle",)),
    "pod-garbage-collector-controller": ("podgc", "pod_gc", ("podgc",)),
    "disruption-controller": ("disruption", "DisruptionController", ("disruption",)),
    "ttl-after-finished-controller": ("ttlafterfinished", "TTLAfterFinishedController", ("ttl-after-finished",)),
    "replicaset-controller": ("replicaset", "ReplicaSetController", ("replicaset",)),
    "replicationcontroller-controller": ("replicaset", "ReplicationControllerController",
                                         ("replicationcontroller",)),
    "deployment-controller": ("deployment", "DeploymentController", ("deployment",)),
    "statefulset-controller": ("statefulset", "StatefulSetController", ("statefulset",)),
    "daemonset-controller": ("daemonset", "DaemonSetController", ("daemonset",)),
    "job-controller": ("job", "JobController", ("job",)),
    "cronjob-controller": ("cronjob", "CronJobController", ("cronjob",)),
}
ALIASES = {alias: name for name, (_, _, aliases) in _ENTRIES.items() for alias in aliases}


def _load(module: str, attr: str) -> Factory | None:
    try:
        target = getattr(importlib.import_module(f"ultraplane.controllers.{module}"), attr)
    except (ImportError, AttributeError) as exc:
        log.debug("controller %s.%s not available: %s", module, attr, exc)
        return None
    if isinstance(target, type):  # a Controller subclass: (client, informers)
        return lambda client, informers, _options: target(client, informers)
    return target  # type: ignore[no-any-return]


def build_registry() -> tuple[dict[str, Factory], list[str]]:
    """(name -> factory for every importable controller, names whose module or class is missing)."""
    registry: dict[str, Factory] = {}
    missing: list[str] = []
    for name, (module, attr, _aliases) in _ENTRIES.items():
        factory = _load(module, attr)
        if factory is None:
            missing.append(name)
        else:
            registry[name] = factory
    return registry, missing


class UnknownController(ValueError):
    pass


def select(spec: str, known: list[str]) -> list[str]:
    """kube's --controllers: '*' enables all, 'name' enables one, '-name' disables one (order-free)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    star = "*" in items
    on: set[str] = set()
    off: set[str] = set()
    for item in items:
        if item == "*":
            continue
        negated = item.startswith("-")
        name = ALIASES.get(item.lstrip("-"), item.lstrip("-"))
        if name not in _ENTRIES:
            raise UnknownController(f'"{item.lstrip("-")}" is not in the list of known controllers')
        (off if negated else on).add(name)
    return [n for n in known if n not in off and (star or n in on)]


class ControllerManager:
    def __init__(self, client: KubeClient, names: list[str], registry: dict[str, Factory],
                 options: ManagerOptions | None = None) -> None:
        self.client = client
        self.informers = InformerFactory(client)
        self.options = options or ManagerOptions()
        self.controllers: dict[str, Runnable] = {n: registry[n](client, self.informers, self.options) for n in names}

    @staticmethod
    async def _supervise(name: str, controller: Runnable, stop: asyncio.Event) -> None:
        """Run a controller until stopped; one that fails (say, the API server was away while it started)
        is logged and started again, as kube-controller-manager keeps its controllers running."""
        while not stop.is_set():
            try:
                await controller.run(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller %s failed; restarting it", name)
                try:
                    await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)
                except TimeoutError:
                    pass

    async def run(self, stop: asyncio.Event) -> None:
        await self.informers.start()
        await self.informers.wait_synced()
        log.info("informers synced; starting controllers: %s", ", ".join(self.controllers))
        tasks = [asyncio.ensure_future(self._supervise(n, c, stop)) for n, c in self.controllers.items()]
        try:
            await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.informers.stop()
