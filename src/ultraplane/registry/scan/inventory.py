"""Live inventory: which image digest runs where (cluster, namespace, pod, container).

`InventoryIndex` is fed pod objects (from watches, or directly) and answers "what runs digest D?" by a dict
lookup and "where does CVE-X run?" by joining with a Scanner's findings. Per pod it keeps a key tuple
(cluster, namespace, name; cluster and namespace interned) and a flat tuple of (container, digest) pairs,
digests interned: about 350 bytes per pod (bench/inventory_bench.py). `InventoryWatcher` runs one pod
informer per cluster (ultraplane.client.informer) and keeps the index current.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from ultraplane.client.http import KubeClient
from ultraplane.client.informer import Informer
from ultraplane.registry.scan.matcher import Finding
from ultraplane.registry.scan.store import Scanner

_DIGEST_IN_IMAGE_ID = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_STATUS_LISTS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
Obj = dict[str, Any]


class Placement(NamedTuple):
    cluster: str
    namespace: str
    pod: str
    container: str


# builds a Placement from a 4-tuple without NamedTuple's Python-level __new__: answers can hold 10^5 of them
_new_placement = tuple.__new__
PodKey = tuple[str, str, str]  # cluster, namespace, name


def digest_from_image_id(image_id: str) -> str:
    """`docker-pullable://repo@sha256:..`, `repo@sha256:..` or `sha256:..` -> `sha256:..`; "" if none."""
    match = _DIGEST_IN_IMAGE_ID.search(image_id or "")
    return match[1] if match else ""


def pod_containers(pod: Obj) -> tuple[str, ...]:
    """Flat (container, digest, container, digest, ...) from the pod's status."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return ()  # its containers have all ended: nothing of it runs any more
    flat: list[str] = []
    for list_name in _STATUS_LISTS:
        for container in status.get(list_name) or []:
            digest = digest_from_image_id(container.get("imageID", ""))
            if digest:
                flat += (sys.intern(container.get("name", "")), sys.intern(digest))
    return tuple(flat)


def slim_pod(pod: Obj) -> Obj:
    """Informer transform: keep only what the index reads, so the cache stays small."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "status": {
            "phase": status.get("phase", ""),
            **{
                name: [
                    {"name": c.get("name", ""), "imageID": c.get("imageID", "")}
                    for c in status.get(name) or []
                ]
                for name in _STATUS_LISTS
            },
        },
    }


class InventoryIndex:
    def __init__(self) -> None:
        self.pods: dict[PodKey, tuple[str, ...]] = {}
        # digest -> {pod: the container running it, or a tuple of them when several in the pod do}; the
        # names live here too so an answer is built without going back to `pods`
        self.by_digest: dict[str, dict[PodKey, str | tuple[str, ...]]] = {}

    @staticmethod
    def pod_key(cluster: str, pod: Obj) -> PodKey:
        meta = pod.get("metadata") or {}
        return sys.intern(cluster), sys.intern(meta.get("namespace", "")), meta.get("name", "")

    def set_pod(self, cluster: str, pod: Obj) -> None:
        self.set_containers(self.pod_key(cluster, pod), pod_containers(pod))

    def set_containers(self, key: PodKey, containers: tuple[str, ...]) -> None:
        old = self.pods.get(key)
        if old == containers:
            return
        if old:
            self._unlink(key, old)
        if not containers:
            self.pods.pop(key, None)
            return
        self.pods[key] = containers
        by_digest = self.by_digest
        for i in range(0, len(containers), 2):
            name, digest = containers[i], containers[i + 1]
            holders = by_digest.get(digest)
            if holders is None:
                by_digest[digest] = {key: name}
                continue
            present = holders.get(key)
            if present is None:
                holders[key] = name
            else:
                holders[key] = (present, name) if isinstance(present, str) else (*present, name)

    def delete_pod(self, cluster: str, pod: Obj) -> None:
        key = self.pod_key(cluster, pod)
        old = self.pods.pop(key, None)
        if old:
            self._unlink(key, old)

    def forget_cluster(self, cluster: str) -> None:
        for key in [k for k in self.pods if k[0] == cluster]:
            self._unlink(key, self.pods.pop(key))

    def _unlink(self, key: PodKey, containers: tuple[str, ...]) -> None:
        for digest in set(containers[1::2]):
            holders = self.by_digest.get(digest)
            if holders is not None:
                holders.pop(key, None)
                if not holders:
                    del self.by_digest[digest]

    def runs(self, digest: str) -> list[Placement]:
        """Every container running this digest, in every cluster."""
        placements: list[Placement] = []
        append = placements.append
        for key, names in self.by_digest.get(digest, {}).items():
            if names.__class__ is str:  # the common case: one container of the pod
                append(_new_placement(Placement, (*key, names)))
            else:
                for name in names:
                    append(_new_placement(Placement, (*key, name)))
        return placements

    def where(self, vulnerability: str, scanner: Scanner) -> dict[str, tuple[list[Finding], list[Placement]]]:
        """Digest -> (its findings for this CVE/advisory id, where it runs), only digests that run."""
        result = {}
        for digest, findings in scanner.digests_with(vulnerability).items():
            placements = self.runs(digest)
            if placements:
                result[digest] = (findings, placements)
        return result

    def running_digests(self) -> Iterable[str]:
        return self.by_digest.keys()


class InventoryWatcher:
    """Pod informers on one or more clusters feeding one index."""

    def __init__(self, index: InventoryIndex, clusters: dict[str, KubeClient], page_size: int = 500) -> None:
        self.index = index
        self.informers: dict[str, Informer] = {}
        for cluster, client in clusters.items():
            informer = Informer(client, "/api/v1/pods", page_size=page_size, transform=slim_pod)
            informer.add_handler(
                on_add=lambda pod, c=cluster: index.set_pod(c, pod),
                on_update=lambda _old, pod, c=cluster: index.set_pod(c, pod),
                on_delete=lambda pod, c=cluster: index.delete_pod(c, pod),
            )
            self.informers[cluster] = informer

    async def start(self) -> None:
        for informer in self.informers.values():
            await informer.start()

    async def wait_synced(self) -> None:
        for informer in self.informers.values():
            await informer.wait_synced()

    async def stop(self) -> None:
        for informer in self.informers.values():
            await informer.stop()
