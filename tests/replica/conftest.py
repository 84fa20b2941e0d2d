"""Fixtures: one real 3-node NATS JetStream cluster per module, and groups of real
``ultraplane store`` member processes sharing a partition of its journal."""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.replica.members import Member, make_members  # noqa: E402
from ultraplane.natscluster import NatsCluster  # noqa: E402

_partitions = itertools.count(1)


def _need_nats() -> None:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed: run scripts/setup --test")


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One NATS cluster shared by a module's tests; each test uses its own partition."""
    _need_nats()
    c = NatsCluster(str(tmp_path_factory.mktemp("nats")))
    c.start()
    try:
        yield c
    finally:
        c.close()


GroupFactory = Callable[..., list[Member]]


@pytest.fixture
def group(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[GroupFactory]:
    """``group(count=3, extra=[...])`` starts ``count`` members of a fresh partition; all are
    stopped after the test (their logs are printed if it failed)."""
    started: list[Member] = []

    def make(count: int = 3, extra: list[str] | None = None, cluster: NatsCluster | None = None) -> list[Member]:
        urls = ",".join((cluster or nats_cluster).urls)
        members = make_members(tmp_path, urls, f"p{next(_partitions)}", count, extra)
        started.extend(members)
        for m in members:
            m.start(wait=False)
        for m in members:
            m.wait_ready()
        return members

    try:
        yield make
    finally:
        for m in started:
            m.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        logs = sorted(Path(str(item.funcargs.get("tmp_path", "."))).glob("*.log"))
        for log in logs:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            report.sections.append((f"member log {log.name}", tail))
