"""Shared fixtures: real etcd and ultraplane servers on free loopback ports.

``both``        a fresh (etcd, ultraplane) ServerPair per test; extra server flags come from
                ``@pytest.mark.server_flags("--quota-backend-bytes=...")`` or indirect parametrization.
``module_pair`` one pair shared by a module's tests (flags from the module's ``SERVER_FLAGS``);
                for tests that use distinct key prefixes and don't disturb each other.
``pair_factory`` start pairs with arbitrary flags inside a test; all are stopped afterwards.

Set ULTRAPLANE_DIFF_TARGET=etcd to run real etcd on both sides (validates the comparisons).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ServerPair, TlsFiles, start_pair  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server_flags(*flags): extra flags for both servers of `both`")


def _flags_for(request: pytest.FixtureRequest) -> list[str]:
    flags: list[str] = []
    param = getattr(request, "param", None)
    if param:
        flags += list(param)
    marker = request.node.get_closest_marker("server_flags")
    if marker:
        flags += list(marker.args)
    return flags


@pytest.fixture
def both(request: pytest.FixtureRequest) -> Iterator[ServerPair]:
    pair = start_pair(_flags_for(request))
    try:
        yield pair
    finally:
        pair.cleanup()


@pytest.fixture(scope="module")
def module_pair(request: pytest.FixtureRequest) -> Iterator[ServerPair]:
    flags = list(getattr(request.module, "SERVER_FLAGS", ()))
    pair = start_pair(flags)
    try:
        yield pair
    finally:
        pair.cleanup()


@pytest.fixture
def pair_factory() -> Iterator[Callable[..., ServerPair]]:
    started: list[ServerPair] = []

    def factory(*flags: str, tls: TlsFiles | None = None) -> ServerPair:
        pair = start_pair(flags, tls)
        started.append(pair)
        return pair

    try:
        yield factory
    finally:
        for pair in started:
            pair.cleanup()
