"""ACK-style controllers end to end: `ultraplane up`, `ultraplane ack` and `ultraplane compose` against it,
kubectl applying Database, Role and Stream manifests, and the real PostgreSQL and nats-server judging."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import yaml
from nats.js.api import StorageType
from nats.js.errors import NotFoundError

from tests.ack.conftest import Postgres
from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import free_port, ultraplane_command, wait_for
from tests.registry.conftest import Client, RegistryProcess
from tests.registry.images import build_image
from tests.registry.oci import push_image

PG = "postgres.ultraplane.io/v1alpha1"
NATS = "nats.ultraplane.io/v1alpha1"
ROLES = "roles.postgres.ultraplane.io"  # plain `roles` is RBAC's


@pytest.fixture(scope="module")
def cluster(postgres: Postgres, nats_url: str, registry: RegistryProcess) -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-ack-", "--nodes", "1") as c:
        c.ok("create", "namespace", "unreachable")
        ack = [*ultraplane_command(), "ack", "--kubeconfig", str(c.kubeconfig), "--resync", "1"]
        password_file = c.work_dir / "registry.password"
        password_file.write_text(registry.password or "")
        c.ok("create", "secret", "generic", "postgres-admin", "--from-literal=host=127.0.0.1",
             f"--from-literal=port={postgres.port}", "--from-literal=username=postgres",
             f"--from-literal=password={postgres.password}")  # the admin connection, as a Secret
        c.spawn([*ack, "--namespace", "default", "--postgres-secret", "default/postgres-admin", "--nats-url", nats_url,
                 "--registry-url", registry.url, "--registry-password-file", str(password_file),
                 "--registry-ca", str(registry.data_dir / "pki" / "ca.crt")], "ack")
        dead = free_port()
        c.spawn([*ack, "--namespace", "unreachable", "--postgres-url",
                 f"postgresql://postgres:x@127.0.0.1:{dead}/postgres", "--nats-url", f"nats://127.0.0.1:{dead}"],
                "ack-unreachable")
        c.spawn([*ultraplane_command(), "compose", "--kubeconfig", str(c.kubeconfig)], "compose")
        for crd in ("databases.postgres.ultraplane.io", "roles.postgres.ultraplane.io",
                    "streams.nats.ultraplane.io", "repositories.registry.ultraplane.io", "resourcegraphdefinitions.kro.run"):
            wait_for(lambda crd=crd: c.kubectl("get", "crd", crd).returncode == 0, crd, timeout=60)
        yield c


def get(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", *args, "-o", "json")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def apply(cluster: Cluster, *docs: dict[str, Any]) -> None:
    cluster.ok("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def wait_condition(cluster: Cluster, resource: str, name: str, kind: str, status: str = "True",
                   namespace: str = "default", timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(cluster, resource, name, "-n", namespace)
        return obj if condition(obj, kind).get("status") == status else None
    try:
        return wait_for(check, f"{resource} {name} {kind}={status}", timeout)
    except AssertionError:
        raise AssertionError(f"{resource} {name}: {get(cluster, resource, name, '-n', namespace)}\n"
                             f"{cluster.log_tail()}") from None


def events(cluster: Cluster, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    listed = get(cluster, "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}") or {}
    return listed.get("items") or []


def database(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None,
             namespace: str = "default") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": PG, "kind": "Database", "metadata": meta, "spec": spec}


def role(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": PG, "kind": "Role", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def secret_data(cluster: Cluster, name: str) -> dict[str, str]:
    secret = get(cluster, "secret", name) or {}
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def test_database_and_role_lifecycle(cluster: Cluster, postgres: Postgres) -> None:
    apply(cluster, role("orders-app", {"name": "orders_app", "connectionLimit": 5, "database": "orders"}),
          database("orders", {"name": "orders", "owner": "orders_app"}))
    db = wait_condition(cluster, "databases", "orders", "ACK.ResourceSynced")
    meta = db["status"]["ackResourceMetadata"]
    assert meta["arn"] == f"arn:ultraplane:postgres:local:127.0.0.1:{postgres.port}:database/orders"
    assert meta["ownerAccountID"] == f"127.0.0.1:{postgres.port}" and meta["region"] == "local"
    assert db["status"]["endpoint"] == {"address": "127.0.0.1", "port": postgres.port}
    assert postgres.query("SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database "
                          "WHERE datname = 'orders'") == [("orders_app", "UTF8")]
    wait_condition(cluster, ROLES, "orders-app", "ACK.ResourceSynced")
    creds = secret_data(cluster, "orders-app-credentials")
    assert {k: creds[k] for k in ("host", "port", "user", "dbname")} == {
        "host": "127.0.0.1", "port": str(postgres.port), "user": "orders_app", "dbname": "orders"}
    with postgres.connect(creds["user"], creds["password"], creds["dbname"]) as conn:  # the password works
        conn.execute("CREATE TABLE line (id int)")
    assert postgres.query("SELECT rolconnlimit, rolcanlogin FROM pg_roles WHERE rolname = 'orders_app'") == [
        (5, True)]

    apply(cluster, role("orders-app", {"name": "orders_app", "connectionLimit": 9, "database": "orders"}))
    wait_for(lambda: postgres.query("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'orders_app'") == [(9,)],
             "connection limit updated", timeout=20)

    postgres.query("DROP DATABASE orders WITH (FORCE)")  # drift: dropped out-of-band, re-created
    wait_for(lambda: postgres.query("SELECT 1 FROM pg_database WHERE datname = 'orders'"), "orders re-created",
             timeout=20)

    cluster.ok("delete", "database", "orders", "--timeout=30s")
    assert postgres.query("SELECT 1 FROM pg_database WHERE datname = 'orders'") == []
    cluster.ok("delete", ROLES, "orders-app", "--timeout=30s")
    assert postgres.query("SELECT 1 FROM pg_roles WHERE rolname = 'orders_app'") == []


def test_retain_keeps_the_database(cluster: Cluster, postgres: Postgres) -> None:
    apply(cluster, database("kept", {}, {"services.k8s.aws/deletion-policy": "retain"}))
    wait_condition(cluster, "databases", "kept", "ACK.ResourceSynced")
    cluster.ok("delete", "database", "kept", "--timeout=30s")
    assert postgres.query("SELECT 1 FROM pg_database WHERE datname = 'kept'") == [(1,)]


def test_conflicting_ownership_and_adoption(cluster: Cluster, postgres: Postgres) -> None:
    apply(cluster, database("billing", {"name": "billing"}))
    wait_condition(cluster, "databases", "billing", "ACK.ResourceSynced")
    apply(cluster, database("billing-copy", {"name": "billing"}))
    copy = wait_condition(cluster, "databases", "billing-copy", "ACK.Terminal")
    assert "'billing' already exists, owned by default/billing" in condition(copy, "ACK.Terminal")["message"]
    assert condition(copy, "ACK.ResourceSynced")["status"] == "False"
    assert any(e["reason"] == "Terminal" and e["type"] == "Warning" for e in events(cluster, "billing-copy"))
    cluster.ok("delete", "database", "billing-copy", "--timeout=30s")
    assert postgres.query("SELECT 1 FROM pg_database WHERE datname = 'billing'") == [(1,)]  # not the copy's

    postgres.query("CREATE DATABASE legacy")  # made by hand: adopted only when asked
    apply(cluster, database("legacy", {}))
    wait_condition(cluster, "databases", "legacy", "ACK.Terminal")
    apply(cluster, database("legacy", {}, {"services.k8s.aws/adoption-policy": "adopt"}))
    wait_condition(cluster, "databases", "legacy", "ACK.ResourceSynced")
    legacy = get(cluster, "database", "legacy") or {}
    assert not condition(legacy, "ACK.Terminal")
    cluster.ok("delete", "database", "legacy", "--timeout=30s")
    assert postgres.query("SELECT 1 FROM pg_database WHERE datname = 'legacy'") == []


def test_invalid_names_are_terminal(cluster: Cluster) -> None:
    apply(cluster, database("bad-name", {"name": "Bad-Name"}), role("long", {"name": "r" * 70}))
    bad = wait_condition(cluster, "databases", "bad-name", "ACK.Terminal")
    assert "InvalidParameter: 'Bad-Name' is not a valid PostgreSQL name" in condition(bad, "ACK.Terminal")["message"]
    wait_condition(cluster, ROLES, "long", "ACK.Terminal")
    cluster.ok("delete", "database", "bad-name", "--timeout=30s")  # nothing to drop: the finalizer goes
    cluster.ok("delete", ROLES, "long", "--timeout=30s")


def test_unreachable_server_is_recoverable(cluster: Cluster) -> None:
    apply(cluster, database("nowhere", {}, namespace="unreachable"))
    obj = wait_condition(cluster, "databases", "nowhere", "ACK.Recoverable", namespace="unreachable")
    assert "unreachable" in condition(obj, "ACK.Recoverable")["message"]
    assert any(e["reason"] == "Recoverable" for e in events(cluster, "nowhere", "unreachable"))
    cluster.ok("patch", "database", "nowhere", "-n", "unreachable", "--type=merge",
               "-p", '{"metadata":{"annotations":{"services.k8s.aws/deletion-policy":"retain"}}}')
    cluster.ok("delete", "database", "nowhere", "-n", "unreachable", "--timeout=30s")


async def _stream(url: str, name: str, publish: int = 0) -> Any:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for i in range(publish):
            await js.publish("events.created", f"{i}".encode())
        try:
            return await js.stream_info(name)
        except NotFoundError:
            return None
    finally:
        await nc.close()


def test_jetstream_stream(cluster: Cluster, nats_url: str) -> None:
    stream = {"apiVersion": NATS, "kind": "Stream", "metadata": {"name": "events", "namespace": "default"},
              "spec": {"name": "EVENTS", "subjects": ["events.>"], "storage": "memory", "maxAge": "1h"}}
    apply(cluster, stream)
    obj = wait_condition(cluster, "streams", "events", "ACK.ResourceSynced")
    assert obj["status"]["ackResourceMetadata"]["arn"].endswith(":stream/EVENTS")
    info = asyncio.run(_stream(nats_url, "EVENTS", publish=3))
    assert info.config.subjects == ["events.>"] and info.config.max_age == 3600
    assert info.config.storage in ("memory", StorageType.MEMORY)
    wait_for(lambda: ((get(cluster, "stream", "events") or {}).get("status") or {}).get("state", {})
             .get("messages") == 3, "stream state in status", timeout=20)

    stream["spec"] |= {"subjects": ["events.>", "audit.*"], "maxAge": "2h"}
    apply(cluster, stream)
    wait_for(lambda: asyncio.run(_stream(nats_url, "EVENTS")).config.subjects == ["events.>", "audit.*"],
             "stream updated", timeout=20)
    assert asyncio.run(_stream(nats_url, "EVENTS")).config.max_age == 7200

    apply(cluster, {**stream, "metadata": {"name": "events-copy", "namespace": "default"}})
    copy = wait_condition(cluster, "streams", "events-copy", "ACK.Terminal")
    assert "'EVENTS' already exists, owned by default/events" in condition(copy, "ACK.Terminal")["message"]
    cluster.ok("delete", "stream", "events-copy", "--timeout=30s")
    assert asyncio.run(_stream(nats_url, "EVENTS")) is not None  # the copy never owned it

    apply(cluster, {**stream, "metadata": {"name": "bad-stream", "namespace": "default"},
                    "spec": {"name": "has.dots", "subjects": ["x"]}})
    wait_condition(cluster, "streams", "bad-stream", "ACK.Terminal")
    cluster.ok("delete", "stream", "bad-stream", "events", "--timeout=30s")
    assert asyncio.run(_stream(nats_url, "EVENTS")) is None


def test_building_blocks_in_a_resource_graph(cluster: Cluster, postgres: Postgres) -> None:
    rgd = {
        "apiVersion": "kro.run/v1alpha1", "kind": "ResourceGraphDefinition", "metadata": {"name": "app-db"},
        "spec": {
            "schema": {"apiVersion": "v1alpha1", "kind": "AppWithDatabase",
                       "spec": {"name": "string", "image": 'string | default="nginx"'}},
            "resources": [
                {"id": "role", "template": {
                    "apiVersion": PG, "kind": "Role", "metadata": {"name": "${schema.spec.name}-app"},
                    "spec": {"name": "${schema.spec.name}_app", "database": "${schema.spec.name}"}}},
                {"id": "database", "template": {
                    "apiVersion": PG, "kind": "Database", "metadata": {"name": "${schema.spec.name}"},
                    "spec": {"name": "${schema.spec.name}", "owner": "${role.status.roleName}"}}},
                {"id": "deployment", "template": {
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "${schema.spec.name}"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "${schema.spec.name}"}},
                             "template": {"metadata": {"labels": {"app": "${schema.spec.name}"}}, "spec": {
                                 "containers": [{"name": "app", "image": "${schema.spec.image}", "env": [
                                     {"name": "DATABASE_HOST", "value": "${database.status.endpoint.address}"},
                                     {"name": "DATABASE_PASSWORD", "valueFrom": {"secretKeyRef": {
                                         "name": "${role.status.credentialsSecret}", "key": "password"}}}]}]}}}}},
            ],
        },
    }
    apply(cluster, rgd)
    wait_for(lambda: ((get(cluster, "rgd", "app-db") or {}).get("status") or {}).get("state") == "Active",
             "RGD app-db Active", timeout=30)
    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "AppWithDatabase",
                    "metadata": {"name": "shop", "namespace": "default"}, "spec": {"name": "shop"}})
    deployment = wait_for(lambda: get(cluster, "deployment", "shop"), "the shop Deployment", timeout=45)
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "DATABASE_HOST", "value": "127.0.0.1"}
    assert env[1]["valueFrom"]["secretKeyRef"] == {"name": "shop-app-credentials", "key": "password"}
    assert postgres.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'") == [
        ("shop_app",)]
    creds = secret_data(cluster, "shop-app-credentials")
    with postgres.connect(creds["user"], creds["password"], creds["dbname"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("shop",)

    cluster.ok("delete", "appwithdatabase", "shop", "--timeout=60s")
    wait_for(lambda: postgres.query("SELECT 1 FROM pg_database WHERE datname = 'shop'") == [],
             "shop dropped with its instance", timeout=30)


KEEP_TWO = {"rules": [{"rulePriority": 1, "description": "keep the newest two",
                       "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 2},
                       "action": {"type": "expire"}}]}


def test_registry_repository(cluster: Cluster, registry: RegistryProcess) -> None:
    admin = Client(registry.url, registry.ca_cert, "admin", registry.password)
    image = build_image([{"hello.txt": b"signed by the ack controller"}])
    push_image(admin, "team/web", "v1", image)
    repository = {"apiVersion": "registry.ultraplane.io/v1alpha1", "kind": "Repository",
                  "metadata": {"name": "web", "namespace": "default"},
                  "spec": {"name": "team/web", "lifecyclePolicy": json.dumps(KEEP_TWO), "signOnPush": True}}
    apply(cluster, repository)
    obj = wait_condition(cluster, "repositories.registry.ultraplane.io", "web", "ACK.ResourceSynced")
    assert obj["status"]["repositoryURI"].endswith("/team/web")
    policy = admin.request("GET", "/ultraplane/v1/repositories/team/web/lifecycle", scope="admin")
    assert policy.status_code == 200, policy.text
    assert policy.json()["lifecyclePolicyText"] == KEEP_TWO

    def verified() -> bool:
        answer = admin.request("POST", "/ultraplane/v1/signing/verify",
                               json={"repository": "team/web", "reference": "v1"})
        return answer.status_code == 200 and answer.json()["verified"]
    wait_for(verified, "team/web:v1 signed by the controller", timeout=20)
    wait_for(lambda: ((get(cluster, "repositories.registry.ultraplane.io", "web") or {}).get("status") or {})
             .get("signedTags") == ["v1"], "signedTags in status", timeout=20)

    bad = {**repository, "metadata": {"name": "bad-policy", "namespace": "default"},
           "spec": {"name": "team/other", "lifecyclePolicy": json.dumps({"rules": [{"rulePriority": "x"}]})}}
    apply(cluster, bad)
    bad_obj = wait_condition(cluster, "repositories.registry.ultraplane.io", "bad-policy", "ACK.Terminal")
    assert condition(bad_obj, "ACK.Terminal")["message"].startswith("InvalidParameter:")

    cluster.ok("delete", "repositories.registry.ultraplane.io", "web", "bad-policy", "--timeout=30s")
    assert admin.request("GET", "/ultraplane/v1/repositories/team/web/lifecycle").status_code == 404
