"""Cost of fieldValidation's strict decoding on a write, in-process (issue 4 hardening).

Every create/update body is now checked for repeated keys (``strictdecode.duplicate_fields``) and for
undeclared fields (``registry.unknown_fields`` against the OpenAPI schema, then dropped). This times
both for a 2 KB pod body without duplicates (the common case: a compact re-encode and byte counts) and
with one duplicate (the rare case: a second, pair-preserving decode).

The anchor is ``orjson.loads`` of the same body, work every write already does.

    .venv/bin/python bench/strict_decode.py [--rounds 7] [--iterations 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from ultraplane.apiserver import openapi
from ultraplane.apiserver.registry import unknown_fields
from ultraplane.apiserver.strictdecode import duplicate_fields

POD = orjson.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
    "name": "web-7d4b9c-x2x9z", "namespace": "ns-1",
    "labels": {"app": "web", "pod-template-hash": "7d4b9c"}}, "spec": {"nodeName": "node-17", "containers": [
        {"name": f"c{i}", "image": "registry.example.com/web:1.2.3", "ports": [{"containerPort": 8080}],
         "env": [{"name": f"K{j}", "value": "v" * 20} for j in range(8)],
         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}} for i in range(3)]}})
DUPLICATE = POD.replace(b'"nodeName":"node-17"', b'"nodeName":"node-17","nodeName":"node-18"')


def per_call(fn: Callable[[], object], iterations: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        samples.append((time.perf_counter() - start) / iterations)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    schema = openapi.Schemas.load().kind_schema("", "v1", "Pod")
    parsed = orjson.loads(POD)
    parsed_dup = orjson.loads(DUPLICATE)
    assert duplicate_fields(POD, parsed) == [] and duplicate_fields(DUPLICATE, parsed_dup) == [
        'duplicate field "spec.nodeName"']
    assert unknown_fields(parsed, schema) == []
    cases = [
        ("orjson.loads of the body (anchor)", lambda: orjson.loads(POD)),
        ("duplicate_fields, no duplicates", lambda: duplicate_fields(POD, parsed)),
        ("duplicate_fields, one duplicate (re-decode)", lambda: duplicate_fields(DUPLICATE, parsed_dup)),
        ("unknown_fields against the Pod schema", lambda: unknown_fields(parsed, schema)),
    ]
    anchor = 0.0
    print(f"pod body {len(POD)} bytes; median of {args.rounds} rounds x {args.iterations} calls")
    for name, fn in cases:
        seconds = per_call(fn, args.iterations, args.rounds)
        anchor = anchor or seconds
        print(f"{name:48s} {seconds * 1e6:7.2f} µs  {seconds / anchor:5.2f}x")


if __name__ == "__main__":
    main()
