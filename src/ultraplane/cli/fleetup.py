"""`ultraplane fleet up`: a whole fleet on one machine.

One fleet control plane (an `ultraplane up` with no nodes, scheduler or controllers: like Karmada's API
server it only stores templates, policies and bindings) plus the member clusters, each a full `up`
with its own store, labelled with account, region and zone, joined by their kubeconfigs; the fleet
controller runs in this process. Every listener is TLS with client certificates, as `up` makes them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ultraplane.client import kubeconfig
from ultraplane.client.http import ApiError, KubeClient


def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("up", help="start a fleet on this machine: a fleet API plus member clusters",
                              description="Start the fleet API server, one `up` cluster per region and index, and "
                                          "the fleet controller; join the clusters; serve until interrupted.")
    parser.add_argument("--data-dir", default="ultraplane-fleet", help="where the fleet and its clusters keep state")
    parser.add_argument("--regions", default="us-east-1,us-west-2,eu-west-1", help="comma-separated regions")
    parser.add_argument("--clusters-per-region", type=int, default=2)
    parser.add_argument("--accounts", type=int, default=1, help="accounts the clusters are spread over")
    parser.add_argument("--nodes", type=int, default=3, help="simulated nodes per member cluster")
    parser.add_argument("--node-type", default="", help="instance types per member (as `up --node-type`)")
    parser.add_argument("--fleet-port", type=int, default=0, help="port of the fleet API server (0: any free)")
    parser.add_argument("--cluster-failure-threshold", type=float, default=30.0)
    parser.add_argument("--dashboard-port", type=int, default=0, help="port of the web dashboard (0: any free)")
    parser.add_argument("--unsafe-no-fsync", action="store_true", help="passed to every `up` (tests, demos)")
    parser.add_argument("--registry-port", type=int, default=5000,
                        help="port of the fleet's one registry (started by the fleet API's `up`; every member's "
                             "kubelets pull from it; 0: none)")
    parser.set_defaults(run=run)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Planned:
    name: str
    region: str
    zone: str
    account: str
    data_dir: Path
    port: int

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"


def plan_members(args: argparse.Namespace, root: Path) -> list[Planned]:
    planned = []
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    for region in regions:
        for index in range(args.clusters_per_region):
            name = f"{region}-c{index + 1}"
            account = f"account-{(len(planned) % max(1, args.accounts)) + 1}"
            planned.append(Planned(name, region, f"{region}{chr(ord('a') + index % 26)}", account,
                                   root / "clusters" / name, free_port()))
    return planned


def registry_flags(fleet_dir: Path, registry_port: int) -> tuple[list[str], list[str]]:
    """(flags of the fleet API's `up`, which runs the registry; flags of each member `up`, which uses it).
    The CA and the kubelets' pull credentials are made here, before any `up` starts and reads them."""
    if not registry_port:
        return ["--registry-port", "0"], ["--registry-port", "0"]
    from ultraplane.registry.server import RegistryConfig, ensure_pull_user, prepare

    files = prepare(RegistryConfig(fleet_dir / "registry", "127.0.0.1", registry_port, pki_dir=fleet_dir / "pki"))
    credentials = ensure_pull_user(fleet_dir / "registry")
    return (["--registry-port", str(registry_port)],
            ["--registry", f"https://127.0.0.1:{registry_port}", "--registry-ca-file", str(files.ca_cert),
             "--registry-credentials-file", str(credentials)])


def up_command(data_dir: Path, port: int, nodes: int, node_type: str, no_fsync: bool, fleet: bool,
               registry: list[str] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(data_dir), "--secure-port", str(port),
            "--etcd-port", str(free_port()), *(registry or [])]
    if fleet:
        argv += ["--nodes", "0", "--no-scheduler", "--no-controllers"]
    elif node_type:
        argv += ["--node-type", node_type]
    else:
        argv += ["--nodes", str(nodes)]
    return argv + (["--unsafe-no-fsync"] if no_fsync else [])


async def wait_ready(path: Path, proc: asyncio.subprocess.Process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"{path.parent.name}: `up` exited with {proc.returncode} (log: {path.parent}/up.log)")
        if path.exists():
            client = await KubeClient.from_kubeconfig(path)
            try:
                response = await client.raw("GET", "/readyz")
                if response.status == 200:
                    return
            except (ConnectionError, OSError):
                pass
            finally:
                await client.close()
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{path.parent.name}: not ready in {timeout:.0f} s")


def run(args: argparse.Namespace) -> int:
    from ultraplane.cli.up import run_loop

    return run_loop(_up(args))


async def _up(args: argparse.Namespace) -> int:
    from ultraplane.cli.fleet import join_cluster
    from ultraplane.fleet.controller import FleetController

    console = Console(stderr=True)
    root = Path(args.data_dir).resolve()
    fleet_dir = root / "fleet"
    fleet_port = args.fleet_port or free_port()
    members = plan_members(args, root)
    fleet_registry, member_registry = registry_flags(fleet_dir, args.registry_port)
    procs: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task(f"starting the fleet API and {len(members)} clusters")
            for data_dir, port, is_fleet in [(fleet_dir, fleet_port, True),
                                             *[(p.data_dir, p.port, False) for p in members]]:
                data_dir.mkdir(parents=True, exist_ok=True)
                log = open(data_dir / "up.log", "ab")  # noqa: SIM115 - handed to the child for its lifetime
                procs.append(await asyncio.create_subprocess_exec(
                    *up_command(data_dir, port, args.nodes, args.node_type, args.unsafe_no_fsync, is_fleet,
                                fleet_registry if is_fleet else member_registry),
                    stdout=log, stderr=log))
            await asyncio.gather(*(wait_ready(d / "kubeconfig", p) for d, p in
                                   zip([fleet_dir, *[m.data_dir for m in members]], procs, strict=True)))
            progress.update(task, description="joining the clusters")
            fleet = await KubeClient.from_kubeconfig(fleet_dir / "kubeconfig")
            controller = FleetController(fleet, failure_threshold=args.cluster_failure_threshold)
            await controller.install()
            for member in members:
                try:
                    await join_cluster(fleet, member.name, kubeconfig.flatten(member.kubeconfig), member.region,
                                       [member.zone], member.account, "ultraplane")
                except ApiError as exc:
                    if exc.code != 409:  # a restart on the same data dir: already joined
                        raise
        from ultraplane.dashboard.server import serve as serve_dashboard

        dashboard_port = args.dashboard_port or free_port()
        dashboard_ready = asyncio.Event()
        dashboard = asyncio.create_task(serve_dashboard(fleet_dir / "kubeconfig", fleet_dir / "pki", "127.0.0.1",
                                                        dashboard_port, stop, dashboard_ready))
        await asyncio.wait([dashboard, asyncio.create_task(dashboard_ready.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if dashboard.done():
            dashboard.result()  # raises what stopped it
        url = f"https://127.0.0.1:{dashboard_port}/"
        (fleet_dir / "dashboard-url").write_text(url + "\n")
        _announce(console, fleet_dir, fleet_port, members, time.monotonic() - started, url)
        await controller.run(stop)
        await dashboard
        await fleet.close()
        return 0
    except (RuntimeError, TimeoutError, ApiError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()


def _announce(console: Console, fleet_dir: Path, port: int, members: list[Planned], took: float, url: str) -> None:
    table = Table(title="member clusters")
    for column in ("NAME", "ACCOUNT", "REGION", "ZONE", "API SERVER", "KUBECONFIG"):
        table.add_column(column)
    for member in members:
        table.add_row(member.name, member.account, member.region, member.zone, f"https://127.0.0.1:{member.port}",
                      str(member.kubeconfig))
    console.print(table)
    console.print(f"[bold green]fleet is up[/] in {took:.1f} s — fleet API at https://127.0.0.1:{port}")
    console.print(f"  kubectl --kubeconfig {fleet_dir / 'kubeconfig'} get clusters")
    console.print(f"  dashboard: {url} (log in with the fleet kubeconfig or a token; its CA is "
                  f"{fleet_dir / 'pki' / 'ca.crt'})")
