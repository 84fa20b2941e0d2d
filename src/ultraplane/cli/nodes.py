"""`ultraplane nodes`: simulated nodes (many kubelets in one process) against any cluster's kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import signal
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from ultraplane.cli.up import run_loop
from ultraplane.nodes.types import INSTANCE_TYPES, MixError, node_types

log = logging.getLogger("ultraplane.nodes")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "nodes",
        help="run simulated nodes: register, heartbeat and run the pods bound to them",
        description="Simulate many kubelets in one process: each node registers with its instance type's "
                    "capacity and labels, renews its Lease in kube-node-lease, and moves the pods bound to it "
                    "through ContainerCreating to Running (and jobs to Succeeded/Failed). With --kill or "
                    "--revive, stop or restart one node of a running simulator instead. Instance types: "
                    + ", ".join(sorted(INSTANCE_TYPES)) + ".",
    )
    add_node_flags(parser)
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster the nodes join")
    parser.add_argument("--region", default="us-east-1", help="topology.kubernetes.io/region of every node")
    parser.add_argument("--zones", type=int, default=3, help="zones the nodes spread over (REGIONa, REGIONb, ...)")
    parser.add_argument("--vpc-cidr", default="10.0.0.0/8",
                        help="addresses of nodes and pods (give each simulator of one cluster its own)")
    parser.add_argument("--start-index", type=int, default=0,
                        help="index of the first node (another simulator of the same cluster starts elsewhere)")
    parser.add_argument("--lease-duration", type=int, default=40, help="leaseDurationSeconds of node Leases")
    parser.add_argument("--lease-renew-interval", type=float, default=10.0,
                        help="seconds between Lease renewals of one node (the kubelet: a quarter of the duration)")
    parser.add_argument("--node-status-report-frequency", type=float, default=300.0,
                        help="seconds between unchanged node status posts (kubelet's flag, 5m)")
    parser.add_argument("--download-mbps", type=float, default=200.0, help="image download rate, MB/s")
    parser.add_argument("--unpack-mbps", type=float, default=200.0, help="image unpack rate, MB/s")
    parser.add_argument("--ec2-latency", type=float, default=0.05,
                        help="seconds per EC2 address call (a /28 prefix, or one address without delegation)")
    parser.add_argument("--ec2-qps", type=float, default=0.0,
                        help="account-wide EC2 call rate (token bucket refill; 0: unthrottled)")
    parser.add_argument("--ec2-burst", type=int, default=200, help="EC2 token bucket size")
    parser.add_argument("--concurrency", type=int, default=64, help="API writes in flight")
    parser.add_argument("--kubelet-address", default="127.0.0.1", help="where the kubelet endpoint listens")
    parser.add_argument("--kubelet-port", type=int, default=0, help="port of the kubelet endpoint (0: any)")
    parser.add_argument("--events", default="true", choices=["true", "false"],
                        help="write the kubelet's pod events (Pulling, Pulled, Created, Started, Killing, BackOff)")
    parser.add_argument("--crash-loop-backoff", type=float, default=10.0, metavar="SECONDS",
                        help="first container restart back-off (the kubelet's 10s), doubling on each crash")
    parser.add_argument("--max-container-restart-period", type=float, default=300.0, metavar="SECONDS",
                        help="longest container restart back-off (kubelet's 5m; its back-off resets after twice this)")
    parser.add_argument("--registry", default=None, metavar="URL",
                        help="the cluster's registry (https://HOST:PORT): images naming HOST:PORT resolve to their "
                             "digest and size through its API")
    parser.add_argument("--registry-ca-file", default=None, metavar="FILE", help="CA that signed the registry's cert")
    parser.add_argument("--registry-credentials-file", default=None, metavar="FILE",
                        help="USER:PASSWORD the kubelets log in to the registry with (its token flow)")
    parser.add_argument("--kill", metavar="NODE", help="stop NODE's kubelet in its running simulator, then exit")
    parser.add_argument("--revive", metavar="NODE", help="restart NODE's kubelet in its running simulator")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def add_node_flags(parser: argparse.ArgumentParser, count_flags: tuple[str, ...] = ("--nodes", "--count"),
                   count_help: str = "number of nodes (default 3, or the sum of --node-type)") -> None:
    """Shared with `ultraplane up` (there the count flag is only --nodes)."""
    parser.add_argument(*count_flags, dest="node_count", type=int, default=None, help=count_help)
    parser.add_argument("--node-type", default=None, metavar="TYPE=N,...",
                        help="instance types and counts, e.g. p5.48xlarge=100,m5.large=900 (default: a mix)")
    parser.add_argument("--prefix-delegation", default="true", choices=["true", "false"],
                        help="nodes take /28 prefixes for pod addresses (false: one EC2 call per address)")
    parser.add_argument("--parallel-unpack", default="true", choices=["true", "false"],
                        help="pull and unpack image layers in parallel, as SOCI does (pod annotation "
                             "ultraplane.io/parallel-unpack overrides)")


def kubeconfig_material(path: str) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(CA, client certificate, client key) PEM of the kubeconfig's current context."""
    cfg = yaml.safe_load(Path(path).read_text())
    context_name = cfg.get("current-context")
    context = next((c["context"] for c in cfg.get("contexts") or [] if c["name"] == context_name),
                   (cfg.get("contexts") or [{"context": {}}])[0]["context"])
    cluster = next((c["cluster"] for c in cfg.get("clusters") or [] if c["name"] == context.get("cluster")), {})
    user = next((u["user"] for u in cfg.get("users") or [] if u["name"] == context.get("user")), {})

    def pem(entry: dict, data_key: str, file_key: str) -> bytes | None:
        if entry.get(data_key):
            return base64.b64decode(entry[data_key])
        if entry.get(file_key):
            return Path(entry[file_key]).read_bytes()
        return None

    return (pem(cluster, "certificate-authority-data", "certificate-authority"),
            pem(user, "client-certificate-data", "client-certificate"),
            pem(user, "client-key-data", "client-key"))


def run(args: argparse.Namespace) -> int:
    if args.kill or args.revive:
        return admin_action(args.kubeconfig, args.kill or args.revive, "kill" if args.kill else "revive")
    try:
        types = node_types(args.node_count, args.node_type)
    except MixError as exc:
        log.error("%s", exc)
        return 2
    return run_loop(serve(args, types))


def admin_action(kubeconfig: str, node: str, action: str) -> int:
    """Find the node's simulator through its Node object, then call its admin endpoint."""
    import subprocess

    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "node", node, "-o", "json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr.strip(), file=sys.stderr)
        return 1
    from ultraplane.apiserver.kubeletlogs import kubelet_location

    where = kubelet_location(json.loads(out.stdout))
    if where is None:
        print(f"node {node} has no kubelet endpoint", file=sys.stderr)
        return 1
    _, cert, key = kubeconfig_material(kubeconfig)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "c.pem").write_bytes(cert)
            (Path(tmp) / "k.pem").write_bytes(key)
            ctx.load_cert_chain(str(Path(tmp) / "c.pem"), str(Path(tmp) / "k.pem"))
    request = urllib.request.Request(f"https://{where[0]}:{where[1]}/admin/nodes/{node}/{action}", method="POST")
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            print(response.read().decode())
    except OSError as exc:
        print(f"cannot reach the simulator of {node}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(args: argparse.Namespace, types: list) -> int:
    from ultraplane.client.http import KubeClient
    from ultraplane.nodes.containers import BackoffPolicy
    from ultraplane.nodes.ipam import Ec2Api
    from ultraplane.nodes.kubelet import KubeletServer
    from ultraplane.nodes.sim import NodeSimulator, SimConfig
    from ultraplane.nodes.startup import PullModel

    cfg = SimConfig(region=args.region, zones=args.zones, vpc_cidr=args.vpc_cidr, start_index=args.start_index,
                    prefix_delegation=args.prefix_delegation == "true", lease_duration=args.lease_duration,
                    lease_renew_interval=args.lease_renew_interval,
                    status_report_interval=args.node_status_report_frequency, concurrency=args.concurrency,
                    kubelet_host=args.kubelet_address, kubelet_port=args.kubelet_port, events=args.events == "true",
                    pull=PullModel(args.download_mbps, args.unpack_mbps, args.parallel_unpack == "true"),
                    backoff=BackoffPolicy(args.crash_loop_backoff, args.max_container_restart_period),
                    ec2=Ec2Api(args.ec2_latency, args.ec2_qps, args.ec2_burst))
    if args.registry:
        from ultraplane.nodes.registrypull import RegistryPuller

        cfg.registry = RegistryPuller.from_flags(args.registry, args.registry_ca_file, args.registry_credentials_file)
    ca, _, _ = kubeconfig_material(args.kubeconfig)
    # one keep-alive connection per write in flight (HTTP/1.1 serves one request at a time), plus the watch
    client = await KubeClient.from_kubeconfig(args.kubeconfig, max_connections=args.concurrency + 2)
    sim = NodeSimulator(client, types, cfg)
    kubelet = KubeletServer(sim, args.kubelet_address, args.kubelet_port, ca)
    sim.kubelet_port = await kubelet.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        starting = asyncio.ensure_future(sim.start())
        await asyncio.wait([starting, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            took = time.monotonic() - started
            log.info("%d nodes registered in %.1fs (%.0f/s); kubelet endpoint https://%s:%d", len(sim.nodes), took,
                     len(sim.nodes) / max(took, 1e-9), args.kubelet_address, sim.kubelet_port)
            await stop.wait()
        else:
            starting.cancel()
    finally:
        await sim.stop()
        await kubelet.stop()
        await client.close()
        if cfg.registry is not None:
            await cfg.registry.close()
    return 0
