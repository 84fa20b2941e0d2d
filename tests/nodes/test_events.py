"""The simulated kubelets' event correlation (client-go's EventCorrelator, nodes/events.py).

Unit tests drive the correlator with a fake clock: dedup into counts, aggregation of similar events,
the spam filter's token bucket and the LRU bound. The cluster tests run a crash-looping pod on a
simulated node with a very short restart back-off (0.5 s doubling to 1 s) and watch its Events
through the API: one BackOff Event whose count grows by PATCH, `kubectl describe`'s "(xN over M)",
and the pod's events capped by the spam filter's burst of 25.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import ultraplane_command, wait_for
from ultraplane.nodes.events import COMBINED_PREFIX, EventCorrelator

T0 = 1_800_000_000.0


def event(message: str = "Back-off restarting failed container app", reason: str = "BackOff",
          pod: str = "web", container: str = "app", kind: str = "Warning", at: float = T0) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod}.{int(at * 1e9):x}", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": pod, "uid": f"uid-{pod}",
                               "apiVersion": "v1", "fieldPath": f"spec.containers{{{container}}}"},
            "reason": reason, "message": message, "type": kind, "source": {"component": "kubelet", "host": "n1"},
            "reportingComponent": "kubelet", "reportingInstance": "n1", "firstTimestamp": stamp,
            "lastTimestamp": stamp, "count": 1}


# ---------------------------------------------------------------------------------------- unit
def test_identical_events_count_up_on_the_first_event() -> None:
    c = EventCorrelator()
    first = c.correlate(event(at=T0), T0)
    assert first is not None and first.pending is not None
    assert (first.count, first.pending["count"], first.name) == (1, 1, event(at=T0)["metadata"]["name"])
    first.pending = None  # written
    again = c.correlate(event(at=T0 + 30), T0 + 30)
    assert again is first and again.count == 2 and again.pending is not None
    body = again.pending
    assert body["metadata"]["name"] == first.name  # the same Event, patched
    assert body["count"] == 2 and body["firstTimestamp"] == "2027-01-15T08:00:00Z"
    assert body["lastTimestamp"] == "2027-01-15T08:00:30Z"
    # another container of the same pod is another event (the key has the fieldPath)
    other = c.correlate(event(container="sidecar", at=T0 + 31), T0 + 31)
    assert other is not first and other is not None and other.count == 1


def test_ten_similar_events_become_one_combined_event() -> None:
    c = EventCorrelator()
    logs = [c.correlate(event(f"probe failed: {i}", "Unhealthy", container=f"c{i % 2}", at=T0 + i), T0 + i)
            for i in range(9)]
    assert len({id(log) for log in logs}) == 9  # nine distinct messages: nine Events
    tenth = c.correlate(event("probe failed: 9", "Unhealthy", at=T0 + 9), T0 + 9)
    assert tenth is not None and tenth.pending is not None and tenth.count == 1
    body = tenth.pending
    assert body["message"] == COMBINED_PREFIX + "probe failed: 9"
    assert body["metadata"]["name"] == f"web.{int((T0 + 9) * 1e9):x}" and body["count"] == 1
    assert "reportingComponent" not in body and body["source"] == {"component": "kubelet", "host": "n1"}
    tenth.pending = None
    # the next new message joins the combined Event: a count patch with the latest message
    eleventh = c.correlate(event("probe failed: 10", "Unhealthy", at=T0 + 10), T0 + 10)
    assert eleventh is tenth and tenth.count == 2
    assert tenth.pending is not None and tenth.pending["message"] == COMBINED_PREFIX + "probe failed: 10"
    assert tenth.pending["metadata"]["name"] == body["metadata"]["name"]
    # another reason of the same pod is another group
    pulled = c.correlate(event("pulled", "Pulled", at=T0 + 11), T0 + 11)
    assert pulled is not None and pulled.pending is not None and pulled.pending["message"] == "pulled"


def test_aggregation_window_slides_with_the_groups_last_event() -> None:
    c = EventCorrelator()
    at = T0
    for i in range(9):  # one every 500 s: the group never goes 600 s without an event
        at = T0 + 500 * i
        c.correlate(event(f"m{i}", "Unhealthy", at=at), at)
    at += 500
    combined = c.correlate(event("m9", "Unhealthy", at=at), at)
    assert combined is not None and combined.pending is not None
    assert combined.pending["message"].startswith(COMBINED_PREFIX)
    fresh = EventCorrelator()
    for i in range(9):
        fresh.correlate(event(f"m{i}", "Unhealthy", at=T0 + i), T0 + i)
    later = T0 + 8 + 601  # more than 10 minutes after the group's last event: it starts over
    alone = fresh.correlate(event("m9", "Unhealthy", at=later), later)
    assert alone is not None and alone.pending is not None and alone.pending["message"] == "m9"


def test_spam_filter_allows_a_burst_of_25_per_object_then_one_per_5_minutes() -> None:
    c = EventCorrelator()
    passed = [c.correlate(event(f"m{i}", f"R{i}", at=T0), T0) for i in range(30)]
    assert sum(1 for log in passed if log is not None) == 25 and all(passed[:25]) and not any(passed[25:])
    assert c.correlate(event("x", "Other", pod="db", at=T0), T0) is not None  # its own bucket
    assert c.correlate(event("m0", "R0", at=T0 + 299), T0 + 299) is None  # the token is not back yet
    back = c.correlate(event("m0", "R0", at=T0 + 301), T0 + 301)
    # the two dropped repeats still counted (client-go observes before it filters)
    assert back is not None and back.count == 3 and back.pending is not None and back.pending["count"] == 3
    assert c.correlate(event("m1", "R1", at=T0 + 302), T0 + 302) is None


def test_a_dropped_first_occurrence_is_created_by_its_next_repeat() -> None:
    c = EventCorrelator(burst=1)
    assert c.correlate(event("a", "A", at=T0), T0) is not None
    assert c.correlate(event("b", "B", at=T0 + 1), T0 + 1) is None
    repeat = c.correlate(event("b", "B", at=T0 + 400), T0 + 400)
    assert repeat is not None and repeat.count == 2 and not repeat.created
    assert repeat.pending is not None and repeat.pending["metadata"]["name"] == repeat.name


def test_caches_are_bounded_lrus() -> None:
    c = EventCorrelator(cache_size=3)
    first = c.correlate(event("a", "A", at=T0), T0)
    for i, reason in enumerate("BC", 1):
        c.correlate(event(reason, reason, at=T0 + i), T0 + i)
    assert c.correlate(event("a", "A", at=T0 + 3), T0 + 3) is first  # a hit refreshes it
    c.correlate(event("d", "D", at=T0 + 4), T0 + 4)  # evicts B, the least recently used
    assert c.correlate(event("a", "A", at=T0 + 5), T0 + 5) is first
    assert len(c.logs) == len(c.aggregates) == 3
    b = c.correlate(event("B", "B", at=T0 + 6), T0 + 6)
    assert b is not None and b.count == 1  # forgotten: a new Event


# ---------------------------------------------------------------------------------------- cluster
WAIT_S = 30.0
NS = "default"



@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-events-") as c:
        c.spawn([*ultraplane_command(), "nodes", "--kubeconfig", str(c.kubeconfig), "--count", "1",
                 "--node-type", "m5.large=1", "--crash-loop-backoff", "0.5", "--max-container-restart-period",
                 "1"], "nodes")
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    wait_for(lambda: len(api.list_node().items) == 1, "the simulated node", 60)
    return api


def kubelet_events(core: client.CoreV1Api, pod: str) -> list[Any]:
    return [e for e in core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}").items
            if e.source and e.source.component == "kubelet"]


def test_crash_loop_back_off_is_one_event_patched_with_its_count(cluster: Cluster, core: client.CoreV1Api) -> None:
    seen: list[tuple[str, str, int]] = []  # (watch type, event name, count) of the pod's BackOff events
    rv = core.list_namespaced_event(NS).metadata.resource_version
    stop = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        for item in w.stream(core.list_namespaced_event, NS, resource_version=rv, timeout_seconds=int(WAIT_S)):
            ev = item["object"]
            if ev.reason == "BackOff" and ev.involved_object.name == "crasher":
                seen.append((item["type"], ev.metadata.name, ev.count))
            if stop.is_set():
                w.stop()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
                                    "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
                                                             "command": ["sh", "-c", "exit 2"]}]}})

    def backed_off() -> Any:
        found = [e for e in kubelet_events(core, "crasher") if e.reason == "BackOff"]
        return found if found and found[0].count >= 3 else None

    back_off = wait_for(backed_off, "a BackOff event counted 3 times")
    assert len(back_off) == 1  # one Event for the repeated occurrence, not one per occurrence
    event = back_off[0]
    assert event.type == "Warning" and event.involved_object.field_path == "spec.containers{app}"
    assert event.message.startswith("Back-off restarting failed container app in pod crasher_default(")
    assert event.first_timestamp <= event.last_timestamp
    wait_for(lambda: any(count >= 3 for _, _, count in seen), "the watch to see the count reach 3")
    stop.set()
    # created once, then modified in place: one name, counts going up one write at a time
    assert seen[0][0] == "ADDED" and {name for _, name, _ in seen} == {event.metadata.name}
    assert all(kind == "MODIFIED" for kind, _, _ in seen[1:])
    counts = [count for _, _, count in seen]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    described = cluster.ok("describe", "pod", "crasher")
    assert re.search(r"Warning\s+BackOff\s+\S+ \(x\d+ over \S+\)\s+kubelet\s+Back-off restarting failed "
                     r"container app in pod crasher_default\(", described), described
    wide = cluster.ok("get", "events", "-o", "wide", "--field-selector", "involvedObject.name=crasher,reason=BackOff",
                      "--no-headers")
    assert len(wide.splitlines()) == 1
    assert int(wide.split()[-2]) >= 3  # COUNT, before NAME


def test_spam_filter_caps_a_crash_looping_pods_events(core: client.CoreV1Api) -> None:
    def restarted() -> bool:
        statuses = core.read_namespaced_pod("crasher", NS).status.container_statuses or []
        return bool(statuses) and statuses[0].restart_count >= 9

    # 4 events per restart (Pulled, Created, Started, BackOff): the burst of 25 is spent by the 6th
    wait_for(restarted, "9 restarts")
    time.sleep(1.0)  # let the last writes land
    events = kubelet_events(core, "crasher")
    assert sum(e.count or 1 for e in events) == 25
    by_reason = {e.reason: e for e in events}
    assert {"Pulled", "Created", "Started", "BackOff"} <= set(by_reason)
    assert by_reason["Started"].count < 9  # later restarts go unrecorded, as on a real kubelet
