"""netobs benchmarks on synthetic traffic over 10,000 pods (no cluster needed).

The topology: PODS pods in workloads of 10 pods, spread over nodes in three zones; every workload
talks to 3 Services of other workloads. Flows are made once up front (seeded) and then timed:

  ingest-objects   FlowStore.add_many of ready Flow objects, one process (flows/s)
  ingest-hubble    `hubble observe -o json` lines parsed and added, one process (flows/s)
  ingest-sharded   the same lines split by source node over --processes worker processes, each with its
                   own FlowStore, then their edge aggregates merged (flows/s end to end, merge included)
  servicemap       a store fed at 100,000 flows/s of flow time for --seconds seconds, then the service
                   map queried: cumulative (what /api/v1/servicemap answers by default), and 10 s / full
                   windows; side by side with the baseline of rescanning the raw flows of the last 10 s
                   into edges (what a query over a flow ring buffer must do). Medians of --repeat runs.

    .venv/bin/python bench/netobs_bench.py --pods 10000 --flows 300000 --seconds 20 --processes 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from ultraplane.netobs.flow import DROPPED, FORWARDED, Endpoint, Flow
from ultraplane.netobs.ingest import parse_hubble_lines
from ultraplane.netobs.store import EdgeStats, FlowStore, edge_key, merge_edges, service_map, shard_of

RATE = 100_000  # flows per second of flow time


def topology(pods: int, nodes: int, seed: int) -> tuple[list[Endpoint], dict[str, list[int]], dict[str, list[str]]]:
    rng = random.Random(seed)
    endpoints = []
    for i in range(pods):
        node = i % nodes
        workload = f"w{i // 10}"
        endpoints.append(Endpoint(ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", namespace=f"ns{i // 10 % 50}",
                                  pod_name=f"{workload}-{i % 10}", workload_kind="Deployment", workload_name=workload,
                                  node_name=f"node-{node}", zone=f"us-east-1{'abc'[node % 3]}"))
    by_workload: dict[str, list[int]] = {}
    for i, ep in enumerate(endpoints):
        by_workload.setdefault(ep.workload_name, []).append(i)
    names = sorted(by_workload)
    talks = {w: rng.sample(names, 3) for w in names}
    return endpoints, by_workload, talks


def make_flows(count: int, endpoints: list[Endpoint], by_workload: dict[str, list[int]],
               talks: dict[str, list[str]], seed: int, start: float = 1_700_000_000.0) -> list[Flow]:
    rng = random.Random(seed)
    flows = []
    for n in range(count):
        src = endpoints[rng.randrange(len(endpoints))]
        target = talks[src.workload_name][rng.randrange(3)]
        dst = endpoints[rng.choice(by_workload[target])]
        dropped = rng.random() < 0.01
        flows.append(Flow(time=start + n / RATE, verdict=DROPPED if dropped else FORWARDED, source=src,
                          destination=dst, protocol="TCP", source_port=32768 + rng.randrange(28000),
                          destination_port=8080, node_name=src.node_name, destination_service=f"{dst.namespace}/{target}",
                          drop_reason_desc="POLICY_DENIED" if dropped else "", bytes=2000, packets=10,
                          tcp_retransmits=1 if rng.random() < 0.02 else 0))
    return flows


def hubble_line(flow: Flow) -> bytes:
    body = flow.to_dict()
    body.pop("bytes"), body.pop("cross_zone")
    return orjson.dumps({"flow": body, "node_name": flow.node_name})


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _shard_worker(lines: list[bytes]) -> tuple[int, dict]:
    store = FlowStore(max_flows=100_000)
    count = store.add_many(parse_hubble_lines(lines))
    return count, store.edges


def rescan(flows: list[Flow], since: float) -> dict:
    edges: dict = {}
    for flow in flows:
        if flow.time >= since:
            key = edge_key(flow)
            stats = edges.get(key)
            if stats is None:
                stats = edges[key] = EdgeStats()
            stats.add(flow)
    return edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--flows", type=int, default=300_000, help="flows per ingestion measurement")
    parser.add_argument("--seconds", type=int, default=20, help="seconds of flow time at 100,000 flows/s")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    endpoints, by_workload, talks = topology(args.pods, args.nodes, args.seed)
    flows = make_flows(args.flows, endpoints, by_workload, talks, args.seed)
    lines = [hubble_line(f) for f in flows]
    print(f"topology: {args.pods} pods, {len(by_workload)} workloads, {args.nodes} nodes, 3 zones; "
          f"{len(flows)} flows per ingestion run")

    objects = median_time(lambda: FlowStore(max_flows=len(flows)).add_many(flows), 3)
    print(f"ingest-objects: {len(flows) / objects:,.0f} flows/s (median of 3)")
    hubble = median_time(lambda: FlowStore(max_flows=len(flows)).add_many(parse_hubble_lines(lines)), 3)
    print(f"ingest-hubble: {len(flows) / hubble:,.0f} flows/s (median of 3, JSON parse included)")

    shards: list[list[bytes]] = [[] for _ in range(args.processes)]
    for flow, line in zip(flows, lines, strict=True):
        shards[shard_of(flow, args.processes)].append(line)
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        def sharded() -> None:
            results = pool.map(_shard_worker, shards)
            assert sum(count for count, _ in results) == len(flows)
            merge_edges(edges for _, edges in results)
        pool.map(_shard_worker, [s[:1000] for s in shards])  # warm the workers
        sharded_time = median_time(sharded, 3)
    print(f"ingest-sharded ({args.processes} processes by source node): {len(flows) / sharded_time:,.0f} flows/s "
          f"(median of 3, {hubble / sharded_time:.2f}x the rate of one process)")

    # service map at 100,000 flows/s: --seconds of flow time, the flow ring holding the last 10 s
    store = FlowStore(max_flows=10 * RATE)
    total = args.seconds * RATE
    feed_start = time.perf_counter()
    fed = 0
    while fed < total:
        batch = make_flows(min(RATE, total - fed), endpoints, by_workload, talks, args.seed + fed,
                           start=1_700_000_000.0 + fed / RATE)
        store.add_many(batch)
        fed += len(batch)
    feed_time = time.perf_counter() - feed_start
    end = 1_700_000_000.0 + args.seconds
    print(f"fed {fed:,} flows ({args.seconds} s at {RATE:,}/s) in {feed_time:.1f} s (flow making included); "
          f"{len(store.edges):,} edges")
    cumulative = median_time(lambda: service_map(store.edges), args.repeat)
    last10 = median_time(lambda: store.service_map(end - 10, end), args.repeat)
    whole = median_time(lambda: store.service_map(end - args.seconds, end), args.repeat)
    ring = list(store.flows)
    baseline = median_time(lambda: service_map(rescan(ring, end - 10)), args.repeat)
    print(f"servicemap cumulative: {cumulative * 1000:.0f} ms; last 10 s window: {last10 * 1000:.0f} ms; "
          f"{args.seconds} s window: {whole * 1000:.0f} ms (medians of {args.repeat})")
    print(f"baseline rescan of the last 10 s of raw flows ({len(ring):,}): {baseline * 1000:.0f} ms; "
          f"aggregates answer the same window {baseline / last10:.1f}x faster, cumulative {baseline / cumulative:.1f}x")


if __name__ == "__main__":
    main()
