"""The workload-controller tests share one API server per module, without scheduler: the tests play
the kubelet and, where they need nodes, create Node objects themselves."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.apiserver.conftest import Cluster, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--no-scheduler", "--no-controllers")
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)
