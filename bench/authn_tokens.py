"""Authentication cost per request, in-process (issue 4, service-account tokens).

A real store (file journal, no fsync) behind the registry, the authenticator and the token issuer as
the API server wires them; one namespace, one service account and a pod-bound token. Times:

- client certificate: reading CN/O from the verified peer certificate (kubectl with the admin
  kubeconfig) — the anchor;
- service-account token, cached: the same token again within 10 s (every request of a client after
  its first);
- service-account token, verified: the cache emptied before every call (RS256 signature check, then
  the service account and pod looked up in the store) — a client's first request;
- TokenRequest issuing: signing one token (RS256, 2048-bit key).

    .venv/bin/python bench/authn_tokens.py [--rounds 5] [--iterations 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ultraplane.apiserver import satokens
from ultraplane.apiserver.authn import User
from ultraplane.apiserver.registry import Registry, WriteOptions
from ultraplane.apiserver.resources import builtin_strategies
from ultraplane.apiserver.server import Request
from ultraplane.apiserver.storage import InProcessBackend
from ultraplane.journal.file import FileJournal
from ultraplane.store import Store

CERT = {"subject": ((("organizationName", "system:masters"),), (("commonName", "kubernetes-admin"),))}


def request(cert: dict[str, Any] | None = None, token: str = "") -> Request:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return Request("GET", "/api/v1/namespaces/bench/pods", {}, headers, b"", cert)


async def timed(fn: Callable[[], Any], iterations: int, rounds: int) -> float:
    """Median over rounds of the mean µs per call; awaits the call's result when it is awaitable."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            result = fn()
            if isinstance(result, Awaitable):
                await result
        samples.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(samples)


async def main(rounds: int, iterations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(FileJournal(str(Path(tmp) / "store"), fsync=False))
        await store.open()
        registry = Registry(InProcessBackend(store), compaction_interval=0)
        for strategy in builtin_strategies():
            registry.register(strategy)
        key = satokens.ensure_signing_key(Path(tmp) / "pki")
        authn, tokens = satokens.install(registry, tokens={}, anonymous=False, issuers=[], key_files=[],
                                         signing_key_file=str(key), api_audiences=[])
        await registry.start()
        watcher = asyncio.ensure_future(authn.run())
        wo = WriteOptions(field_manager="bench")
        s = registry.strategies
        await registry.create(s[("", "v1", "namespaces")], "", {"metadata": {"name": "bench"}}, wo)
        sa = await registry.create(s[("", "v1", "serviceaccounts")], "bench", {"metadata": {"name": "robot"}}, wo)
        pod = await registry.create(s[("", "v1", "pods")], "bench", {"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "robot", "containers": [{"name": "c", "image": "pause"}]}}, wo)
        token = tokens.issue(sa, list(tokens.keys.api_audiences), 3600, time.time(), pod=pod)
        cert_req, token_req = request(CERT), request(token=token)
        user = await authn.authenticate(token_req)  # type: ignore[misc]
        assert isinstance(user, User) and user.name == "system:serviceaccount:bench:robot"

        def uncached() -> Any:
            authn.cache.clear()
            authn.cache_by_key.clear()
            return authn.authenticate(token_req)

        rows = [
            ("client certificate (anchor)", await timed(lambda: authn.authenticate(cert_req), iterations, rounds)),
            ("service-account token, cached", await timed(lambda: authn.authenticate(token_req), iterations, rounds)),
            ("service-account token, verified + 2 lookups", await timed(uncached, iterations // 4, rounds)),
            ("TokenRequest: sign one token", await timed(
                lambda: tokens.issue(sa, ["a"], 3600, time.time(), pod=pod), iterations // 20, rounds)),
        ]
        anchor = rows[0][1]
        print(f"{'path':48} {'µs/call':>10} {'× anchor':>10}")
        for name, micros in rows:
            print(f"{name:48} {micros:10.2f} {micros / anchor:10.1f}")
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await registry.close()
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.iterations))
