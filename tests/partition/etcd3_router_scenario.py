"""The python etcd3 client against the partition router: watches on two partitions over one watch
stream, leases shared by keys of two partitions, txn, and the cross-partition refusal.

The etcd3 package only loads under the pure-Python protobuf runtime, so the test runs this file as
a subprocess (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python etcd3_router_scenario.py HOST:PORT);
the last line printed is a JSON object with what it observed.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from typing import Any

import etcd3
import etcd3.exceptions


def _details(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    return details() if callable(details) else str(exc)


def main(endpoint: str) -> dict[str, Any]:
    host, port = endpoint.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=20)
    result: dict[str, Any] = {}

    # two watchers, on two partitions, share the client's one watch stream
    events: queue.Queue[tuple[str, str, str]] = queue.Queue()

    def on_pods(response: Any) -> None:
        for ev in response.events:
            events.put(("pods", type(ev).__name__, ev.key.decode()))

    def on_events(response: Any) -> None:
        for ev in response.events:
            events.put(("events", type(ev).__name__, ev.key.decode()))

    pods_watch = client.add_watch_prefix_callback("/registry/pods/e3/", on_pods)
    events_watch = client.add_watch_prefix_callback("/registry/events/e3/", on_events)
    client.put("/registry/pods/e3/p1", "a")
    client.put("/registry/events/e3/ev1", "b")
    client.delete("/registry/pods/e3/p1")
    seen = []
    deadline = time.monotonic() + 20
    while len(seen) < 3 and time.monotonic() < deadline:
        try:
            seen.append(list(events.get(timeout=1)))
        except queue.Empty:
            pass
    result["watch_events"] = sorted(seen)
    client.cancel_watch(pods_watch)
    client.cancel_watch(events_watch)

    # one lease, keys on two partitions
    lease = client.lease(120)
    client.put("/registry/pods/e3/leased", "x", lease=lease)
    client.put("/e3/leased", "y", lease=lease)
    result["lease_keys"] = sorted(k.decode() for k in lease.keys)
    refreshed = lease.refresh()
    result["refresh_ttl"] = refreshed[0].TTL
    result["remaining_positive"] = lease.remaining_ttl > 0
    lease.revoke()
    result["after_revoke"] = [client.get("/registry/pods/e3/leased")[0], client.get("/e3/leased")[0]]

    # a txn within one partition
    client.put("/registry/pods/e3/t", "old")
    ok, _ = client.transaction(
        compare=[client.transactions.value("/registry/pods/e3/t") == "old"],
        success=[client.transactions.put("/registry/pods/e3/t", "new")],
        failure=[],
    )
    result["txn_ok"] = ok
    result["txn_value"] = client.get("/registry/pods/e3/t")[0].decode()

    # a txn across partitions is refused, and nothing of it is applied
    try:
        client.transaction(
            compare=[client.transactions.value("/registry/pods/e3/t") == "new"],
            success=[client.transactions.put("/registry/events/e3/t", "nope")],
            failure=[],
        )
        result["cross_txn"] = "accepted"
    except Exception as exc:  # etcd3 raises grpc errors it does not map as-is
        code = getattr(exc, "code", None)
        result["cross_txn"] = [code().name if callable(code) else type(exc).__name__, _details(exc)]
    result["cross_txn_applied"] = client.get("/registry/events/e3/t")[0] is not None
    client.close()
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), default=lambda b: b.decode() if isinstance(b, bytes) else str(b)))
