"""Catch-up: how long a brand-new replicated member takes to join a store holding SIZE of data.

Starts a 3-node JetStream cluster on loopback and one ``ultraplane store --journal nats://...``
member (the writer), fills the store with ``--size`` bytes of live values through etcdload
(distinct keys, ``--value`` bytes each), then starts a new member on an empty data dir,
``--runs`` times (each one stopped and its data dir wiped before the next). A new member reads
the newest snapshot from the JetStream object store, then the stream messages after it (an
ordered consumer), and then tails. Reported per run: seconds from process start until it
answers Status, and until it has applied the writer's last stream sequence; the median of each.

    .venv/bin/python bench/replica_catchup.py [--size 1GiB] [--value 65536] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
import nats  # noqa: E402
import nats.js.errors  # noqa: E402
from replica_bench import Member, writer_of  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from servers import ETCDLOAD_DEFAULT  # noqa: E402

from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from ultraplane.natscluster import NatsCluster  # noqa: E402

PARTITION = "catchup"
STREAM = "ULTRAPLANE"


def parse_size(text: str) -> int:
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "b": 1}
    low = text.strip().lower()
    for unit, factor in units.items():
        if low.endswith(unit):
            return int(float(low[: -len(unit)]) * factor)
    return int(low)


def status(endpoint: str, timeout: float = 2) -> rpc_pb2.StatusResponse:
    with grpc.insecure_channel(endpoint) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)


def fill(endpoint: str, size: int, value: int, console: Console) -> float:
    """Put ``size`` bytes of values through etcdload in steps; returns the seconds taken."""
    puts = max(1, size // value)
    steps = 20
    started = time.monotonic()
    with Progress(TextColumn("filling"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} B"),
                  TransferSpeedColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("fill", total=puts * value)
        for i in range(steps):
            n = puts // steps + (1 if i < puts % steps else 0)
            if n == 0:
                continue
            out = subprocess.run(
                [ETCDLOAD_DEFAULT, "-endpoint", endpoint, "-op", "put", "-total", str(n), "-clients", "16",
                 "-conns", "4", "-val", str(value), "-keys", "1000000000", "-prefix", f"/catchup/s{i:02d}/"],
                capture_output=True, text=True, timeout=3600)
            if out.returncode != 0:
                raise RuntimeError(f"etcdload failed: {out.stderr.strip()}")
            errors = json.loads(out.stdout.strip().splitlines()[-1]).get("errors", 0)
            if errors:
                raise RuntimeError(f"etcdload reported {errors} errors while filling")
            progress.advance(task, n * value)
    return time.monotonic() - started


async def journal_layout(urls: list[str]) -> dict[str, float]:
    """What a new member has to read: the newest snapshot and the stream messages after it."""
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=30)
        info = await js.stream_info(STREAM, subjects_filter=f"ultraplane.journal.{PARTITION}")
        store = await js.object_store(f"{STREAM}_snapshots")
        try:
            listed = await store.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:  # no snapshot yet
            listed = []
        snaps = sorted((o for o in listed if o.name.startswith(PARTITION + "/")), key=lambda o: o.name)
        newest = snaps[-1] if snaps else None
        snap_seq = int(newest.name.split("/")[1].split("-")[0]) if newest else 0
        last = info.state.last_seq
        return {"stream_bytes": float(info.state.bytes), "stream_first": float(info.state.first_seq),
                "stream_last": float(last), "snapshots": float(len(snaps)),
                "snapshot_bytes": float(newest.size or 0) if newest else 0.0, "snapshot_seq": float(snap_seq)}
    finally:
        await nc.close()


def launch(member: Member, log_path: Path) -> None:
    """Start a member with its info-level log in ``log_path`` (snapshot and recovery lines)."""
    url = f"http://{member.endpoint}"
    with open(log_path, "wb") as log:
        member.proc = subprocess.Popen(
            [sys.executable, "-m", "ultraplane", "store", "--name", member.name, "--data-dir",
             str(member.data_dir), "--listen-client-urls", url, "--advertise-client-urls", url,
             "--journal", member.journal, "--partition", PARTITION, "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT)


def join_once(root: Path, journal: str, run: int, target_seq: int, console: Console) -> tuple[float, float, str]:
    newcomer = Member(root, f"new{run}", journal, PARTITION)
    log_path = root / f"new{run}.log"
    started = time.monotonic()
    launch(newcomer, log_path)
    serving = caught_up = 0.0
    try:
        with console.status(f"run {run}: new member joining") as spinner:
            while True:
                if newcomer.proc.poll() is not None:
                    raise RuntimeError(f"the new member exited: {log_path.read_text()[-2000:]}")
                try:
                    st = status(newcomer.endpoint)
                except grpc.RpcError:
                    time.sleep(0.05)
                    continue
                now = time.monotonic() - started
                serving = serving or now
                spinner.update(f"run {run}: serving after {serving:.1f} s, applied {st.raftAppliedIndex:,}"
                               f" of {target_seq:,}")
                if st.raftAppliedIndex >= target_seq:
                    caught_up = now
                    break
                time.sleep(0.05)
        how = "snapshot + stream" if "from a snapshot" in log_path.read_text() else "stream only"
        return serving, caught_up, how
    finally:
        newcomer.stop()
        shutil.rmtree(newcomer.data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="live value bytes to fill (e.g. 256MiB, 1GiB)")
    parser.add_argument("--value", type=int, default=65536, help="value size in bytes")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="bench-catchup-", dir="/work" if Path("/work").is_dir() else None))
    # three copies of the stream and of the snapshots, on one disk
    cluster = NatsCluster(str(root / "nats"), max_file_store=f"{max(8, 6 * size // 1024**3 + 4)}G")
    cluster.start()
    journal = ",".join(cluster.urls)
    writer = Member(root, "writer", journal, PARTITION)
    rows: list[tuple[float, float, str]] = []
    try:
        launch(writer, root / "writer.log")
        writer_of([writer])
        fill_s = fill(writer.endpoint, size, args.value, console)
        time.sleep(2)  # let a snapshot the last puts made due finish
        st = status(writer.endpoint, timeout=10)
        target = st.raftIndex
        layout = asyncio.run(journal_layout(cluster.urls))
        console.print(f"filled {size / 1024**2:,.0f} MiB in {fill_s:.0f} s ({size / 1024**2 / fill_s:,.1f} MiB/s); "
                      f"writer at stream sequence {target:,}, db size {st.dbSize / 1024**2:,.0f} MiB; "
                      f"newest snapshot {layout['snapshot_bytes'] / 1024**2:,.0f} MiB at sequence "
                      f"{layout['snapshot_seq']:,.0f}; stream holds {layout['stream_bytes'] / 1024**2:,.0f} MiB "
                      f"(sequences {layout['stream_first']:,.0f}..{layout['stream_last']:,.0f})")
        for run in range(1, args.runs + 1):
            serving, caught_up, how = join_once(root, journal, run, target, console)
            rows.append((serving, caught_up, how))
            console.print(f"run {run}: serving after {serving:.2f} s, caught up after {caught_up:.2f} s ({how})")
    finally:
        writer.stop()
        for line in (root / "writer.log").read_text(errors="replace").splitlines():
            if any(word in line for word in ("snapshot", "ERROR", "WARNING", "writer", "Error")):
                console.print(f"writer: {line}", highlight=False, markup=False)
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"new member joins a store holding {size / 1024**2:,.0f} MiB ({args.runs} runs)")
    for col in ("", "median s", "min s", "max s"):
        table.add_column(col, justify="right" if col else "left")
    for name, idx in (("answers Status", 0), ("applied the writer's last sequence", 1)):
        vals = [r[idx] for r in rows]
        table.add_row(name, f"{statistics.median(vals):.2f}", f"{min(vals):.2f}", f"{max(vals):.2f}")
    console.print(table)
    print("raw:", json.dumps({"size": size, "value": args.value, "runs": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
