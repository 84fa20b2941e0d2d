"""Real servers for the ACK tests: a PostgreSQL 15 server from Debian (run as `nobody`, since initdb and
postgres refuse to run as root), a JetStream-enabled nats-server and the
ultraplane registry, each on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.harness import free_port
from tests.registry.conftest import RegistryProcess, start_registry

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "nobody"


@dataclass
class Postgres:
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def connect(self, user: str = "postgres", password: str | None = None,
                dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, password=password or self.password,
                               dbname=dbname, autocommit=True, connect_timeout=3)

    def query(self, text: str, *params: object) -> list[tuple]:
        with self.connect() as conn:
            cursor = conn.execute(text, params or None)
            return cursor.fetchall() if cursor.description else []


def _as_postgres_user() -> dict[str, str]:
    """Popen arguments that drop root (the child itself is postgres, so signals reach it directly)."""
    return {"user": PG_USER, "group": "nogroup"} if os.geteuid() == 0 else {}


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "postgres").exists():
        pytest.fail("PostgreSQL 15 is not installed: run scripts/setup --test")
    work = Path(tempfile.mkdtemp(prefix="ultraplane-pg-"))
    password = "admin-" + os.urandom(6).hex()
    (work / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(work, PG_USER)
        shutil.chown(work / "pw", PG_USER)
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(work / "data"), "-U", "postgres", f"--pwfile={work / 'pw'}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
                   check=True, capture_output=True, cwd=work, **_as_postgres_user())
    port = free_port()
    log = open(work / "postgres.log", "wb")
    proc = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(work / "data"), "-p", str(port), "-k", str(work),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work, **_as_postgres_user())
    server = Postgres(port, password)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.query("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((work / "postgres.log").read_text()) from None
                time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed: run scripts/setup --test")
    work = Path(tempfile.mkdtemp(prefix="ultraplane-nats-"))
    port = free_port()
    proc = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryProcess]:
    """The ultraplane registry (TLS, token auth, user admin), as the registry tests start it."""
    work = Path(tempfile.mkdtemp(prefix="ultraplane-ack-registry-"))
    server = start_registry(work)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
