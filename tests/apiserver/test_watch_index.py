"""The watch cache's watcher index: events reach only the watchers that may want them, with kube's
event types for objects moving in and out of a watcher's selection, shared encodings, bounded
queues and bookmarks.

A real store (file journal, no fsync) behind the API server's registry and watch cache; pods are
written straight to storage where a test needs what validation forbids (a pod changing nodes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ultraplane.apiserver import registry as registry_module
from ultraplane.apiserver import watchcache
from ultraplane.apiserver.registry import Filter, ListOptions, Registry, Strategy
from ultraplane.apiserver.resources import builtin_strategies
from ultraplane.apiserver.storage import InProcessBackend
from ultraplane.apiserver.watchcache import CachedEvent, WatchCache
from ultraplane.journal.file import FileJournal
from ultraplane.store import Store

PODS = b"/registry/pods/"


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[Registry]:
    store = Store(FileJournal(str(tmp_path / "store"), fsync=False))
    await store.open()
    registry = Registry(InProcessBackend(store), compaction_interval=0)
    for strategy in builtin_strategies():
        registry.register(strategy)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()
        await store.close()


def pods(reg: Registry) -> Strategy:
    return reg.strategies[("", "v1", "pods")]


def pod_json(name: str, namespace: str = "ns", node: str = "") -> bytes:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "pause"}]}
    if node:
        spec["nodeName"] = node
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                       "spec": spec}).encode()


async def settle(cache: WatchCache, revision: int) -> None:
    """Until the cache has dispatched revision (the backend watch delivers asynchronously)."""
    for _ in range(500):
        if cache.revision >= revision:
            await asyncio.sleep(0)  # let woken watch tasks run
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"watch cache stuck at {cache.revision}, waiting for {revision}")


class Watch:
    """A registry watch consumed by a task, its lines decoded as they arrive."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self.stream = stream
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for chunk in self.stream:
            self.events.extend(json.loads(line) for line in chunk.splitlines())

    def seen(self) -> list[tuple[str, str, str, str]]:
        """(type, name, nodeName, resourceVersion) of each event."""
        return [(e["type"], e["object"]["metadata"].get("name", ""), e["object"].get("spec", {}).get("nodeName", ""),
                 e["object"]["metadata"]["resourceVersion"]) for e in self.events]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def watch(reg: Registry, namespace: str, field_selector: str = "", *, name: str = "",
                bookmarks: bool = False) -> Watch:
    cache = reg.cache_for(pods(reg))
    stream = await reg.watch(pods(reg), namespace, name,
                             ListOptions(field_selector=field_selector, resource_version=str(cache.revision)),
                             bookmarks=bookmarks, timeout=0)
    w = Watch(stream)
    await asyncio.sleep(0)  # subscribed once the task first runs
    return w


async def test_pod_moving_between_nodes_reaches_the_old_and_the_new_nodes_watchers(reg: Registry) -> None:
    backend, cache = reg.backend, reg.cache_for(pods(reg))
    unscheduled = await watch(reg, "", "spec.nodeName=")
    node_a = await watch(reg, "", "spec.nodeName=node-a")
    node_b = await watch(reg, "", "spec.nodeName=node-b")
    node_c = await watch(reg, "", "spec.nodeName=node-c")
    other_ns_b = await watch(reg, "other", "spec.nodeName=node-b")
    everything = await watch(reg, "")
    key = PODS + b"ns/p"

    created = await backend.create(key, pod_json("p"))
    bound = await backend.update(key, pod_json("p", node="node-a"), created)  # the scheduler's binding
    moved = await backend.update(key, pod_json("p", node="node-b"), bound)  # storage allows what validation doesn't
    deleted = await backend.delete(key, moved)
    await settle(cache, deleted)

    r = str
    assert unscheduled.seen() == [("ADDED", "p", "", r(created)), ("DELETED", "p", "", r(bound))]
    # leaving node-a's selection: DELETED with the previous content at the move's resourceVersion (kube's)
    assert node_a.seen() == [("ADDED", "p", "node-a", r(bound)), ("DELETED", "p", "node-a", r(moved))]
    assert node_b.seen() == [("ADDED", "p", "node-b", r(moved)), ("DELETED", "p", "node-b", r(deleted))]
    assert everything.seen() == [("ADDED", "p", "", r(created)), ("MODIFIED", "p", "node-a", r(bound)),
                                 ("MODIFIED", "p", "node-b", r(moved)), ("DELETED", "p", "node-b", r(deleted))]
    assert node_c.seen() == [] and other_ns_b.seen() == []
    for w in (unscheduled, node_a, node_b, node_c, other_ns_b, everything):
        await w.stop()
    assert cache.resources == {}, "closed watches leave nothing in the index"


async def test_an_event_visits_only_the_watchers_indexed_for_it(reg: Registry) -> None:
    """No per-watcher work for watchers of other nodes, namespaces or objects: their convert never runs."""
    cache = reg.cache_for(pods(reg))
    calls: dict[str, int] = {}

    def counting(label: str) -> Any:
        def convert(ev: CachedEvent) -> CachedEvent:
            calls[label] = calls.get(label, 0) + 1
            return ev
        return convert

    def node_of(obj: dict[str, Any]) -> str:
        return (obj.get("spec") or {}).get("nodeName", "")

    subs = [cache.subscribe(PODS, PODS, False, cache.revision, counting(f"node-{i}"),
                            ("spec.nodeName", node_of, f"node-{i}")) for i in range(2000)]
    subs.append(cache.subscribe(PODS, PODS + b"ns/", False, cache.revision, counting("ns")))
    subs.append(cache.subscribe(PODS, PODS + b"ns2/", False, cache.revision, counting("ns2")))
    subs.append(cache.subscribe(PODS, PODS, False, cache.revision, counting("all pods")))
    subs.append(cache.subscribe(PODS, PODS + b"ns/p", True, cache.revision, counting("ns/p")))
    subs.append(cache.subscribe(PODS, PODS + b"ns/q", True, cache.revision, counting("ns/q")))
    subs.append(cache.subscribe(b"/registry/services/", b"/registry/services/specs/", False, cache.revision,
                                counting("services")))
    subs.append(cache.subscribe(PODS, PODS + b"ns2/", False, cache.revision, counting("ns2 node-7"),
                                ("spec.nodeName", node_of, "node-7")))

    created = await reg.backend.create(PODS + b"ns/p", pod_json("p", node="node-7"))
    await settle(cache, created)
    # node-7's watcher in ns2 is found by the trigger but its namespace does not match: no convert
    assert calls == {"node-7": 1, "ns": 1, "all pods": 1, "ns/p": 1}
    for sub in subs:
        sub.close()
    assert cache.resources == {}


async def test_watchers_share_one_encoding_of_each_event(reg: Registry) -> None:
    s, cache = pods(reg), reg.cache_for(pods(reg))
    flt = Filter(s, "", "spec.nodeName=node-a")
    convert = lambda ev: Registry._event_line(ev, flt, s)  # noqa: E731
    trigger = ("spec.nodeName", lambda obj: s.fields(obj)["spec.nodeName"], "node-a")
    first = cache.subscribe(s.prefix, s.prefix, False, cache.revision, convert, trigger)
    second = cache.subscribe(s.prefix, s.collection_prefix("ns"), False, cache.revision, convert, trigger)
    created = await reg.backend.create(PODS + b"ns/p", pod_json("p", node="node-a"))
    await settle(cache, created)
    assert len(first.queue) == len(second.queue) == 1
    assert first.queue[0] is second.queue[0], "the line is encoded once and shared"
    assert json.loads(first.queue[0])["type"] == "ADDED"
    first.close()
    second.close()


async def test_watch_scope_follows_the_selectors(reg: Registry) -> None:
    s = pods(reg)
    scope = Registry._watch_scope
    assert scope(s, "ns", "p", Filter(s, "", "")) == (b"/registry/pods/ns/p", True, None)
    # kubectl get pod p -w and single-object informers: fieldSelector=metadata.name=p
    assert scope(s, "ns", "", Filter(s, "", "metadata.name=p")) == (b"/registry/pods/ns/p", True, None)
    assert scope(s, "", "", Filter(s, "", "metadata.name=p"))[:2] == (b"/registry/pods/", False)
    assert scope(s, "", "", Filter(s, "", "metadata.namespace=ns"))[:2] == (b"/registry/pods/ns/", False)
    prefix, exact, trigger = scope(s, "", "", Filter(s, "", "spec.nodeName=n1,status.phase=Running"))
    assert (prefix, exact) == (b"/registry/pods/", False) and trigger is not None
    assert (trigger[0], trigger[2]) == ("spec.nodeName", "n1")
    assert trigger[1]({"spec": {"nodeName": "n9"}}) == "n9"
    assert scope(s, "", "", Filter(s, "", "spec.nodeName!=n1"))[2] is None, "only equality is indexed"
    nodes = reg.strategies[("", "v1", "nodes")]
    assert scope(nodes, "", "", Filter(nodes, "", "metadata.name=n1")) == (b"/registry/minions/n1", True, None)


async def test_metadata_name_watch_gets_only_its_object(reg: Registry) -> None:
    cache = reg.cache_for(pods(reg))
    only_p = await watch(reg, "ns", "metadata.name=p")
    await reg.backend.create(PODS + b"ns/q", pod_json("q"))
    await reg.backend.create(PODS + b"ns/pp", pod_json("pp"))
    created = await reg.backend.create(PODS + b"ns/p", pod_json("p"))
    await settle(cache, created)
    assert only_p.seen() == [("ADDED", "p", "", str(created))]
    await only_p.stop()


async def test_a_watcher_that_falls_too_far_behind_is_ended(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchcache, "SUBSCRIBER_QUEUE_LIMIT", 5)
    s, cache = pods(reg), reg.cache_for(pods(reg))
    stream = await reg.watch(s, "ns", "", ListOptions(resource_version=str(cache.revision)), bookmarks=False,
                             timeout=0)
    rev = await reg.backend.create(PODS + b"ns/p0", pod_json("p0"))
    first = await asyncio.wait_for(anext(stream), 5)  # subscribed; replays p0
    assert json.loads(first)["object"]["metadata"]["name"] == "p0"
    for i in range(1, 11):  # the client reads nothing meanwhile
        rev = await reg.backend.create(PODS + f"ns/p{i}".encode(), pod_json(f"p{i}"))
    await settle(cache, rev)
    assert cache.resources == {}, "the slow watcher left the index"
    rest = await asyncio.wait_for(anext(stream), 5)
    assert [json.loads(line)["object"]["metadata"]["name"] for line in rest.splitlines()] == \
        ["p1", "p2", "p3", "p4", "p5"]
    with pytest.raises(StopAsyncIteration):  # the stream ends: the client re-lists, as with kube
        await asyncio.wait_for(anext(stream), 5)


async def test_bookmarks_advance_past_events_for_other_watchers(reg: Registry,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "BOOKMARK_INTERVAL", 0.05)
    cache = reg.cache_for(pods(reg))
    node_a = await watch(reg, "", "spec.nodeName=node-a", bookmarks=True)
    rev = await reg.backend.create(PODS + b"ns/elsewhere", pod_json("elsewhere", node="node-b"))
    await settle(cache, rev)
    for _ in range(100):
        if any(e["type"] == "BOOKMARK" and e["object"]["metadata"]["resourceVersion"] == str(rev)
               for e in node_a.events):
            break
        await asyncio.sleep(0.02)
    assert {e["type"] for e in node_a.events} == {"BOOKMARK"}
    assert node_a.events[-1]["object"] == {"kind": "Pod", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": str(rev)}}
    await node_a.stop()
