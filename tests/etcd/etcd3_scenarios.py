"""Scenarios run with the python etcd3 client against a server, one per process.

The etcd3 package's generated code only loads under the pure-Python protobuf runtime, which must
be chosen before protobuf is first imported, so the tests run this file as a subprocess:

    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python etcd3_scenarios.py SCENARIO HOST:PORT

The last line printed is a JSON object with what the scenario observed; the test asserts on it.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

import etcd3
import etcd3.exceptions


def _details(exc: Exception) -> str:
    """The server's message of a gRPC error (etcd3 passes unmapped codes through as-is)."""
    details = getattr(exc, "details", None)
    return details() if callable(details) else str(exc)


def _client(endpoint: str) -> etcd3.Etcd3Client:
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=20)


def kv(client: etcd3.Etcd3Client) -> dict[str, Any]:
    client.put("/e3/a", "1")
    client.put("/e3/b", "2")
    value, meta = client.get("/e3/a")
    prefix = [(v.decode(), m.key.decode()) for v, m in client.get_prefix("/e3/")]
    missing, _ = client.get("/e3/none")
    deleted = client.delete("/e3/b")
    after = [m.key.decode() for _, m in client.get_prefix("/e3/")]
    return {
        "value": value.decode(),
        "version": meta.version,
        "prefix": prefix,
        "missing": missing,
        "deleted": deleted,
        "after": after,
    }


def txn(client: etcd3.Etcd3Client) -> dict[str, Any]:
    client.put("/e3/txn", "old")
    ok, responses = client.transaction(
        compare=[client.transactions.value("/e3/txn") == "old"],
        success=[client.transactions.put("/e3/txn", "new"), client.transactions.get("/e3/txn")],
        failure=[client.transactions.put("/e3/txn", "failed")],
    )
    got = [kv_[0].decode() for kv_ in responses[1]]
    ok2, _ = client.transaction(
        compare=[client.transactions.version("/e3/txn") == 99],
        success=[],
        failure=[client.transactions.delete("/e3/txn")],
    )
    value, _ = client.get("/e3/txn")
    return {"ok": ok, "got": got, "ok2": ok2, "value_after": value}


def watch(client: etcd3.Etcd3Client) -> dict[str, Any]:
    events, cancel = client.watch_prefix("/e3/w/")
    seen: list[tuple[str, str, str]] = []
    done = threading.Event()

    def consume() -> None:
        for ev in events:
            seen.append((type(ev).__name__, ev.key.decode(), ev.value.decode()))
            if len(seen) == 3:
                done.set()
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    # watch_prefix returns once the server has answered "created", so nothing below is missed
    client.put("/e3/w/x", "1")
    client.put("/e3/other", "ignored")
    client.put("/e3/w/x", "2")
    client.delete("/e3/w/x")
    done.wait(30)
    cancel()
    return {"seen": seen}


def lease(client: etcd3.Etcd3Client) -> dict[str, Any]:
    granted = client.lease(30)
    client.put("/e3/leased", "v", lease=granted)
    refreshed = [r.TTL for r in granted.refresh()]
    info = client.get_lease_info(granted.id)
    keys = [k.decode() for k in info.keys]
    remaining = granted.remaining_ttl
    granted.revoke()
    value, _ = client.get("/e3/leased")
    return {
        "refreshed": refreshed,
        "granted_ttl": info.grantedTTL,
        "keys": keys,
        "remaining_ok": 0 < remaining <= 30,
        "value_after_revoke": value,
    }


def errors(client: etcd3.Etcd3Client) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        client.revoke_lease(123456789)
    except Exception as exc:  # etcd3 raises grpc errors for codes it does not map
        out["revoke_missing"] = _details(exc)
    client.put("/e3/compact", "1")
    _, meta = client.get("/e3/compact")
    client.put("/e3/compact", "2")
    client.compact(meta.mod_revision + 1)
    # etcd3 cannot read at a revision, but it can watch from one: the server answers with the
    # compaction point and the client raises RevisionCompactedError
    responses, cancel = client.watch_response("/e3/compact", start_revision=meta.mod_revision)
    try:
        next(responses)
        out["compacted"] = "no error"
    except etcd3.exceptions.RevisionCompactedError as exc:
        out["compacted"] = exc.compacted_revision
    finally:
        cancel()
    out["compacted_expected"] = meta.mod_revision + 1
    return out


def status(client: etcd3.Etcd3Client) -> dict[str, Any]:
    st = client.status()
    members = [(m.name, list(m.client_urls)) for m in client.members]
    return {"version": st.version, "leader": st.leader.name, "members": members}


SCENARIOS: dict[str, Callable[[etcd3.Etcd3Client], dict[str, Any]]] = {
    "kv": kv,
    "txn": txn,
    "watch": watch,
    "lease": lease,
    "errors": errors,
    "status": status,
}


def main() -> None:
    scenario, endpoint = sys.argv[1], sys.argv[2]
    client = _client(endpoint)
    try:
        result = SCENARIOS[scenario](client)
    finally:
        client.close()
    print(json.dumps(result, default=lambda o: o.decode() if isinstance(o, bytes) else repr(o)))


if __name__ == "__main__":
    main()
