"""Randomized soak of issue 17's scenario: linearizable reads on replicated members under faults.

Each run starts three ``ultraplane store`` members on a fresh partition of one 3-node NATS
JetStream cluster (real nats-server processes), records a randomized history of puts, deletes,
txns and linearizable gets from 9 clients while the writer is SIGKILLed, another member (the new
writer or a follower, at random) is SIGSTOPped for 6.5-9 s and SIGCONTed, and one NATS node (the
journal stream's leader or another, at random) is killed; then checks it with the project's own
checkers: the real-time revision scan (counts stale reads), the full linearizability search, and
the watch checker (the paused member's live watch against the committed history)::

    .venv/bin/python bench/replica_soak.py --runs 5 --ops 6000 [--seed 1] [--full-check-max 15000]

``--member-from REV`` runs the members with ``src/ultraplane/replica/member.py`` as of git revision
REV (the rest of the tree as it is): the same soak before and after a change to the read path.
Exit status 1 if any run had a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from replica_reads import LAUNCHER  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.replica.chaos import ChaosOutcome, ChaosPlan, run_chaos  # noqa: E402
from tests.replica.members import make_members  # noqa: E402
from ultraplane.natscluster import NatsCluster  # noqa: E402


async def one_run(root: Path, cluster: NatsCluster, run: int, plan: ChaosPlan, progress: Progress,
                  full_check_max: int) -> tuple[ChaosOutcome, float, float]:
    members = make_members(root, ",".join(cluster.urls), f"soak{run}", 3, ["--log-level", "info"])
    task = progress.add_task(f"run {run}: pause {plan.pause}, NATS {plan.nats_victim}", total=plan.min_ops)
    try:
        for m in members:
            m.start(wait=False)
        for m in members:
            await asyncio.to_thread(m.wait_ready)
        started = time.monotonic()
        outcome = await run_chaos(members, cluster, plan, full_check_max_ops=full_check_max,
                                  on_op=lambda op: progress.advance(task))
        elapsed = time.monotonic() - started
        check_started = time.monotonic()
        return outcome, elapsed, time.monotonic() - check_started
    finally:
        for m in members:
            m.stop()
        progress.update(task, completed=plan.min_ops)


async def main_async(args: argparse.Namespace) -> int:
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="replica-soak-"))
    if args.member_from:
        # every member process this run starts loads the old read path (tests/harness honours
        # ULTRAPLANE_CMD; child processes inherit the environment)
        old = root / "member_from.py"
        old.write_text(subprocess.run(["git", "-C", str(REPO), "show",
                                       f"{args.member_from}:src/ultraplane/replica/member.py"],
                                      check=True, capture_output=True, text=True).stdout)
        launcher = root / "launcher.py"
        launcher.write_text(LAUNCHER)
        os.environ["ULTRAPLANE_CMD"] = f"{sys.executable} {launcher}"
        os.environ["REPLICA_MEMBER_FILE"] = str(old)
    cluster = NatsCluster(str(root / "nats"))
    cluster.start()
    rows = []
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            for run in range(1, args.runs + 1):
                plan = ChaosPlan.random(args.seed * 1000 + run)
                plan.min_ops = args.ops
                plan.max_ops_per_client = 1_000_000  # the timeline and --ops decide when the load ends
                outcome, elapsed, _ = await one_run(root, cluster, run, plan, progress, args.full_check_max)
                rows.append((run, plan, outcome, elapsed))
                if outcome.violations or not outcome.watches.ok:
                    console.print(f"[red]run {run}: violations[/red]\n{outcome.explain()}")
                else:
                    console.print(f"run {run}: {len(outcome.ops)} ops, 0 violations; "
                                  + ", ".join(f"{t:.1f}s {w}" for t, w in outcome.timeline))
    finally:
        cluster.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"logs kept in {root}")
    table = Table(title="replica soak: kill -9 writer, SIGSTOP/SIGCONT a member, kill a NATS node")
    for col in ("run", "paused", "NATS node", "ops", "unknown", "stale", "full search", "watch events",
                "watch violations", "load s"):
        table.add_column(col)
    total_ops = total_stale = total_watch = 0
    failed_full = 0
    for run, plan, o, elapsed in rows:
        full = "skipped" if o.linearizable is None else ("ok" if o.linearizable.ok else
                                                         ("undecided" if o.linearizable.exhausted else "VIOLATED"))
        failed_full += int(o.linearizable is not None and not o.linearizable.ok)
        table.add_row(str(run), plan.pause, plan.nats_victim, str(len(o.ops)), str(o.unknown),
                      str(len(o.realtime.violations)), full, str(o.watch_events), str(len(o.watches.violations)),
                      f"{elapsed:.1f}")
        total_ops += len(o.ops)
        total_stale += len(o.realtime.violations)
        total_watch += len(o.watches.violations)
    console.print(table)
    ops_per_s = [len(o.ops) / e for _, _, o, e in rows]
    console.print(f"total: {total_ops} operations checked over {len(rows)} runs; stale reads/writes "
                  f"{total_stale}; full searches failed {failed_full}; watch violations {total_watch}; "
                  f"median {statistics.median(ops_per_s):.0f} ops/s under faults")
    return 1 if total_stale or failed_full or total_watch else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=6000, help="at least this many operations per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--full-check-max", type=int, default=15000,
                        help="run the full linearizability search on histories up to this long")
    parser.add_argument("--keep", action="store_true", help="keep member and NATS logs")
    parser.add_argument("--member-from", metavar="REV", help="run replica/member.py as of this git revision")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
