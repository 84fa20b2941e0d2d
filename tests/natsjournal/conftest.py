"""Fixtures: a real 3-node NATS JetStream cluster on free loopback ports."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ultraplane.natscluster import NatsCluster  # imports nats-py only when used

_names = itertools.count(1)

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One cluster shared by a module's tests; each test uses its own stream."""
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed: run scripts/setup --test")
    c = NatsCluster(str(tmp_path_factory.mktemp("nats")))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A cluster for a test that kills nodes."""
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed: run scripts/setup --test")
    c = NatsCluster(str(tmp_path / "nats"))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def stream_name() -> str:
    return f"UPJ{next(_names)}"
