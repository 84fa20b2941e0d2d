"""Shared pieces of the core-controller tests: `ultraplane up` with its controller manager running (as a
child process, the way users get it), and a Python client for it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster, start_cluster

WAIT_S = 30.0


def managed_cluster(*flags: str) -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--no-scheduler", *flags)
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


def python_client(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def eventually(check: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.1) -> Any:
    """The check's first truthy result; AssertionErrors and API errors (404 while a controller catches up)
    count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, ApiException) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
