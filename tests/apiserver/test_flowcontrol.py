"""API Priority and Fairness: classification, seats, fair queuing, 429s, the flowcontrol objects, /metrics.

The dispatcher tests drive ``FlowControl`` directly with real asyncio requests whose handlers wait on
events, so queueing is deterministic. The server tests run ``ultraplane up`` with one seat
(kube's --max-requests-inflight) and a token user that a test FlowSchema sends to a tiny level.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.apiserver.conftest import Cluster, start_cluster
from ultraplane.apiserver import flowcontrol
from ultraplane.apiserver.app import RequestInfo
from ultraplane.apiserver.flowcontrol import FlowControl, bootstrap_objects, make_tier
from ultraplane.apiserver.server import Request, Response

TOO_MANY = b"Too many requests, please try again later.\n"


def with_uids(objs: list[dict]) -> list[dict]:
    for obj in objs:
        obj["metadata"]["uid"] = str(uuid.uuid4())
    return objs


def bootstrapped(seats: int = 600) -> FlowControl:
    levels, schemas = bootstrap_objects()
    fc = FlowControl(make_tier("standard", seats))
    fc.configure(with_uids(schemas), with_uids(levels))
    return fc


def info(verb: str, resource: str, namespace: str = "", name: str = "", group: str = "",
         subresource: str = "") -> RequestInfo:
    return RequestInfo(verb, "apis" if group else "api", group, "v1", namespace, resource, name, subresource)


def classify(fc: FlowControl, user: str, groups: list[str], req: RequestInfo | None, path: str = "/") -> str:
    return fc.classify(user, groups, req, "GET", path)[0].name


# ============================================================================ classification
def test_classification_follows_kube_bootstrap_schemas() -> None:
    fc = bootstrapped()
    auth = ["system:authenticated"]
    assert classify(fc, "admin", ["system:masters", *auth], info("delete", "pods", "x", "p")) == "exempt"
    kcm = "system:kube-controller-manager"
    assert classify(fc, kcm, auth, info("update", "leases", "kube-system", "kcm", "coordination.k8s.io")) \
        == "system-leader-election"
    assert classify(fc, kcm, auth, info("update", "endpoints", "default", "svc")) == "endpoint-controller"
    assert classify(fc, kcm, auth, info("list", "pods")) == "kube-controller-manager"
    assert classify(fc, "system:kube-scheduler", auth, info("create", "pods", "ns", "p", subresource="binding")) \
        == "kube-scheduler"
    node = ["system:nodes", *auth]
    assert classify(fc, "system:node:n1", node, info("update", "nodes", "", "n1", subresource="status")) \
        == "system-node-high"
    assert classify(fc, "system:node:n1", node, info("get", "pods", "ns", "p")) == "system-nodes"
    sa_groups = ["system:serviceaccounts", "system:serviceaccounts:kube-system", *auth]
    assert classify(fc, "system:serviceaccount:kube-system:endpoint-controller", sa_groups,
                    info("get", "endpoints", "ns", "e")) == "endpoint-controller"
    assert classify(fc, "system:serviceaccount:kube-system:foo", sa_groups,
                    info("update", "leases", "default", "l", "coordination.k8s.io")) == "workload-leader-election"
    assert classify(fc, "system:serviceaccount:kube-system:foo", sa_groups, info("get", "secrets", "a", "b")) \
        == "kube-system-service-accounts"
    assert classify(fc, "system:serviceaccount:default:app", ["system:serviceaccounts", *auth],
                    info("list", "pods", "default")) == "service-accounts"
    assert classify(fc, "alice", auth, info("get", "pods", "default", "p")) == "global-default"
    assert classify(fc, "alice", auth, None, "/healthz") == "probes"
    assert classify(fc, "alice", auth, None, "/metrics") == "global-default"
    assert classify(fc, "system:anonymous", ["system:unauthenticated"], None, "/readyz") == "probes"


def test_nonresource_wildcards_and_levels() -> None:
    fc = bootstrapped()
    custom = {"metadata": {"name": "debug", "uid": "u1"}, "spec": {
        "priorityLevelConfiguration": {"name": "workload-low"}, "matchingPrecedence": 50,
        "rules": [{"subjects": [{"kind": "User", "user": {"name": "*"}}],
                   "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/debug/*"]}]}]}}
    levels, schemas = bootstrap_objects()
    fc.configure(with_uids([*schemas, custom]), with_uids(levels))
    assert classify(fc, "bob", ["system:authenticated"], None, "/debug/pprof") == "debug"
    assert classify(fc, "bob", ["system:authenticated"], None, "/debugger") == "global-default"
    schema, level = fc.classify("bob", ["system:authenticated"], None, "GET", "/debug/x")
    assert (schema.level, level.name, level.exempt) == ("workload-low", "workload-low", False)


def test_seat_shares_and_list_width() -> None:
    fc = bootstrapped(seats=1000)
    limits = {name: lv.nominal for name, lv in fc.levels.items()}
    # ceil(1000 * shares / 245): the shares of the limited levels sum to 245
    assert limits == {"exempt": 0, "system": 123, "node-high": 164, "leader-election": 41, "workload-high": 164,
                      "workload-low": 409, "global-default": 82, "catch-all": 21}
    assert fc.levels["workload-low"].guaranteed == 409 - round(409 * 0.9)
    fc.object_counts["pods"] = 150_000
    assert fc.width(info("list", "pods"), {}) == 10
    assert fc.width(info("list", "pods", "ns"), {"limit": "500"}) == 5
    assert fc.width(info("list", "pods"), {"limit": "50"}) == 1
    assert fc.width(info("get", "pods", "ns", "p"), {}) == 1
    assert fc.width(info("watch", "pods"), {}) == 1
    fc.object_counts["configmaps"] = 250
    assert fc.width(info("list", "configmaps"), {}) == 3


def test_shuffle_sharding_deals_distinct_queues() -> None:
    for h in (0, 1, 12345, 2**40 + 7):
        hand = flowcontrol.deal(h, 64, 6)
        assert len(set(hand)) == 6 and all(0 <= q < 64 for q in hand)
    assert flowcontrol.deal(99, 64, 6) == flowcontrol.deal(99, 64, 6)


# ============================================================================ dispatching
def tiny_config(queues: int, hand: int, length: int) -> tuple[list[dict], list[dict]]:
    levels, schemas = bootstrap_objects()
    tiny = {"metadata": {"name": "tiny"}, "spec": {"type": "Limited", "limited": {
        "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
        "limitResponse": {"type": "Queue", "queuing": {"queues": queues, "handSize": hand,
                                                       "queueLengthLimit": length}}}}}
    tenants = {"metadata": {"name": "tenants"}, "spec": {
        "priorityLevelConfiguration": {"name": "tiny"}, "matchingPrecedence": 10,
        "distinguisherMethod": {"type": "ByUser"},
        "rules": [{"subjects": [{"kind": "Group", "group": {"name": "tenants"}}],
                   "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                                      "namespaces": ["*"]}]}]}}
    return with_uids([*schemas, tenants]), with_uids([*levels, tiny])


def http_request(path: str = "/api/v1/namespaces/default/configmaps") -> Request:
    return Request("POST", path, {}, {}, b"", None)


async def test_full_queues_get_429_with_retry_after_and_pf_headers() -> None:
    schemas, levels = tiny_config(queues=1, hand=1, length=2)
    fc = FlowControl(make_tier("xl", 1))
    fc.configure(schemas, levels)
    tiny = fc.levels["tiny"]
    assert (tiny.nominal, tiny.guaranteed, tiny.ceiling) == (1, 1, 1)
    gate = asyncio.Event()

    async def slow() -> Response:
        await gate.wait()
        return Response(201, b"{}")

    req = info("create", "configmaps", "default")
    tasks = [asyncio.ensure_future(fc.handle(http_request(), "tenant-a", ["tenants"], req, slow)) for _ in range(10)]
    await asyncio.sleep(0.05)
    rejected = [t.result() for t in tasks if t.done()]
    assert len(rejected) == 7  # one executing, two queued (queueLengthLimit 2), the rest turned away
    tenants_uid = next(s["metadata"]["uid"] for s in schemas if s["metadata"]["name"] == "tenants")
    for response in rejected:
        headers = dict(response.headers)
        assert (response.status, response.body, response.content_type) == (429, TOO_MANY, "text/plain; charset=utf-8")
        assert headers["Retry-After"] == "1"
        assert headers[flowcontrol.FS_UID_HEADER] == tenants_uid
        assert headers[flowcontrol.PL_UID_HEADER] == tiny.uid
    assert fc.rejected == {("tiny", "tenants", "queue-full"): 7}
    assert fc.inqueue[("tiny", "tenants")] == 2 and fc.executing[("tiny", "tenants")] == 1
    gate.set()
    done = await asyncio.gather(*tasks)
    assert sorted(r.status for r in done) == [201] * 3 + [429] * 7
    assert (tiny.executing, tiny.waiting, fc.inqueue[("tiny", "tenants")]) == (0, 0, 0)
    assert fc.dispatched[("tiny", "tenants")] == 3


async def test_reject_level_and_queue_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    schemas, levels = tiny_config(queues=4, hand=2, length=10)
    fc = FlowControl(make_tier("xl", 1))
    fc.configure(schemas, levels)
    gate = asyncio.Event()

    async def slow() -> Response:
        await gate.wait()
        return Response(200)

    # catch-all has limitResponse Reject: no queues; once its own seat and the lendable pool are taken, 429
    fc.configure([s for s in schemas if s["metadata"]["name"] != "global-default"], levels)
    anyone = ["system:authenticated"]
    room = fc.levels["catch-all"].guaranteed + fc.pool
    running = [asyncio.ensure_future(fc.handle(http_request("/y"), "u", anyone, None, slow)) for _ in range(room)]
    extra = asyncio.ensure_future(fc.handle(http_request("/y"), "u", anyone, None, slow))
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in running)
    assert extra.done() and extra.result().status == 429
    assert fc.rejected[("catch-all", "catch-all", "concurrency-limit")] == 1
    # a request that waits longer than the queue timeout is turned away with reason time-out
    monkeypatch.setattr(flowcontrol, "QUEUE_WAIT_TIMEOUT", 0.05)
    tenant = [asyncio.ensure_future(fc.handle(http_request(), "t", ["tenants"], info("get", "pods", "a", "b"), slow))
              for _ in range(2)]
    await asyncio.sleep(0.2)
    assert tenant[1].done() and tenant[1].result().status == 429
    assert fc.rejected[("tiny", "tenants", "time-out")] == 1
    gate.set()
    await asyncio.gather(*running, *tenant)
    assert all(lv.executing == 0 and lv.waiting == 0 for lv in fc.levels.values())


async def test_a_flooding_user_does_not_starve_another() -> None:
    schemas, levels = tiny_config(queues=64, hand=2, length=100)
    fc = FlowControl(make_tier("xl", 1))
    fc.configure(schemas, levels)
    order: list[str] = []

    def work(user: str) -> Callable[[], Awaitable[Response]]:
        async def run() -> Response:
            order.append(user)
            await asyncio.sleep(0.001)
            return Response(200)
        return run

    req = info("list", "pods", "default")
    flood = [asyncio.ensure_future(fc.handle(http_request(), "flooder", ["tenants"], req, work("flooder")))
             for _ in range(60)]
    await asyncio.sleep(0)
    victim = [asyncio.ensure_future(fc.handle(http_request(), "victim", ["tenants"], req, work("victim")))
              for _ in range(4)]
    results = await asyncio.gather(*flood, *victim)
    assert all(r.status == 200 for r in results)
    victim_positions = [i for i, user in enumerate(order) if user == "victim"]
    # fair queuing alternates between the two flows: the victim is done long before the flood drains
    assert victim_positions[-1] < 14, order[:16]


async def test_borrowing_uses_lendable_seats_of_idle_levels() -> None:
    fc = bootstrapped(seats=100)
    gate = asyncio.Event()

    async def slow() -> Response:
        await gate.wait()
        return Response(200)

    level = fc.levels["global-default"]
    assert (level.nominal, level.guaranteed) == (9, 4)  # ceil(100*20/245); lends round(9 * 50%) = 5
    tasks = [asyncio.ensure_future(fc.handle(http_request("/x"), f"u{i}", ["system:authenticated"], None, slow))
             for i in range(100)]
    await asyncio.sleep(0.01)
    # it runs its guaranteed seats plus the whole lendable pool of the idle levels
    assert level.executing == level.guaranteed + fc.pool
    assert level.waiting == 100 - level.executing
    gate.set()
    await asyncio.gather(*tasks)
    assert fc.pool_used == 0 and level.executing == 0


async def test_standard_tier_scales_up_after_a_delay() -> None:
    schemas, levels = tiny_config(queues=4, hand=1, length=50)
    fc = FlowControl(flowcontrol.Tier("standard", seats=245, min_seats=245, max_seats=1000, scale_up_delay=5.0))
    fc.configure(schemas, levels)
    tiny = fc.levels["tiny"]
    assert tiny.nominal == 1  # ceil(245 * 1 / 246)
    gate = asyncio.Event()

    async def slow() -> Response:
        await gate.wait()
        return Response(200)

    tasks = [asyncio.ensure_future(fc.handle(http_request(), "t", ["tenants"], info("get", "pods", "a", "b"), slow))
             for _ in range(4)]
    await asyncio.sleep(0.01)
    assert tiny.waiting == 3 and fc.pressure_since is not None
    start = fc.pressure_since
    fc.autoscale(start + 4.0)
    assert fc.tier.seats == 245  # not before the delay
    fc.autoscale(start + 5.2, cpu_busy=0.95)
    assert fc.tier.seats == 245  # nor while the event loop is saturated: more seats would not add CPU
    fc.autoscale(start + 5.5, cpu_busy=0.3)
    assert fc.tier.seats == 490 and tiny.nominal == 2  # the new seats go to the levels at once
    assert tiny.executing == 2 and tiny.waiting == 2
    event = fc.tier.events[-1]
    assert (event.seats_from, event.seats_to, event.delay) == (245, 490, 5.5)
    assert fc.tier.describe()["scaleEvents"][-1]["delaySeconds"] == 5.5
    fc.autoscale(start + 11.0)
    assert fc.tier.seats == 980 and tiny.executing == 4 and tiny.waiting == 0
    fc.autoscale(start + 16.5)
    assert fc.tier.seats == 980  # the queues are empty: no more growth
    gate.set()
    await asyncio.gather(*tasks)
    provisioned = make_tier("4xl")
    assert (provisioned.seats, provisioned.quota_bytes, provisioned.adaptive) == (6800, 16 * 1024**3, False)
    assert [make_tier(t).seats for t in ("xl", "2xl", "4xl", "8xl")] == [1000, 2600, 6800, 13600]
    with pytest.raises(ValueError):
        make_tier("huge")


# ============================================================================ against a running server
@pytest.fixture(scope="module")
def apf_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tokens = tmp_path_factory.mktemp("apf") / "tokens.csv"
    tokens.write_text('flood-token,flooder,uid-flooder,"system:masters"\nviewer-token,viewer,uid-viewer,\n')
    c = start_cluster("inprocess", "--max-requests-inflight", "1", "--token-auth-file", str(tokens))
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


def call(cluster: Cluster, method: str, path: str, token: str = "", body: dict | None = None,
         ) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    else:
        ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=ctx, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def uids(cluster: Cluster, kind: str) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["uid"] for o in cluster.json("get", kind)["items"]}


def test_kubectl_tables(apf_cluster: Cluster) -> None:
    lines = apf_cluster.ok("get", "flowschemas").splitlines()
    assert lines[0].split() == ["NAME", "PRIORITYLEVEL", "MATCHINGPRECEDENCE", "DISTINGUISHERMETHOD", "AGE",
                                "MISSINGPL"]
    names = [line.split()[0] for line in lines[1:]]
    assert names[:3] == ["exempt", "probes", "system-leader-election"] and names[-1] == "catch-all"
    assert set(names) >= {"endpoint-controller", "workload-leader-election", "system-node-high", "system-nodes",
                          "kube-controller-manager", "kube-scheduler", "kube-system-service-accounts",
                          "service-accounts", "global-default"}
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["exempt"][1:4] == ["exempt", "1", "<none>"]
    assert rows["kube-scheduler"][1:4] == ["workload-high", "800", "ByNamespace"]
    deadline = time.monotonic() + 10
    while rows["catch-all"][5] != "False" and time.monotonic() < deadline:  # the Dangling condition gets set
        time.sleep(0.2)
        rows = {line.split()[0]: line.split() for line in apf_cluster.ok("get", "flowschemas").splitlines()[1:]}
    assert rows["catch-all"][5] == "False"
    lines = apf_cluster.ok("get", "prioritylevelconfigurations").splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "NOMINALCONCURRENCYSHARES", "QUEUES", "HANDSIZE", "QUEUELENGTHLIMIT",
                                "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"exempt", "system", "node-high", "leader-election", "workload-high", "workload-low",
                         "global-default", "catch-all"}
    assert rows["exempt"][1:6] == ["Exempt", "<none>", "<none>", "<none>", "<none>"]
    assert rows["workload-low"][1:6] == ["Limited", "100", "128", "6", "50"]
    assert rows["catch-all"][1:6] == ["Limited", "5", "<none>", "<none>", "<none>"]
    fs = apf_cluster.json("get", "flowschema", "exempt")
    assert fs["apiVersion"] == "flowcontrol.apiserver.k8s.io/v1" and fs["kind"] == "FlowSchema"
    assert fs["metadata"]["annotations"]["apf.kubernetes.io/autoupdate-spec"] == "true"


def test_pf_headers_name_the_matched_objects(apf_cluster: Cluster) -> None:
    fs, pl = uids(apf_cluster, "flowschemas"), uids(apf_cluster, "prioritylevelconfigurations")
    status, headers, _ = call(apf_cluster, "GET", "/api/v1/namespaces/default")
    assert status == 200
    assert headers["x-kubernetes-pf-flowschema-uid"] == fs["exempt"]
    assert headers["x-kubernetes-pf-prioritylevel-uid"] == pl["exempt"]
    # an ordinary user lands in global-default, whatever authorization then answers
    status, headers, _ = call(apf_cluster, "GET", "/api/v1/namespaces/default/configmaps", token="viewer-token")
    assert status in (200, 403)
    assert headers["x-kubernetes-pf-flowschema-uid"] == fs["global-default"]
    assert headers["x-kubernetes-pf-prioritylevel-uid"] == pl["global-default"]


TINY_LEVEL = """apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: tiny}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 1
    lendablePercent: 0
    borrowingLimitPercent: 0
    limitResponse: {type: Queue, queuing: {queues: 1, handSize: 1, queueLengthLimit: 1}}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: aaa-flood}
spec:
  priorityLevelConfiguration: {name: tiny}
  matchingPrecedence: 1
  distinguisherMethod: {type: ByUser}
  rules:
  - subjects: [{kind: User, user: {name: flooder}}]
    resourceRules: [{verbs: ["*"], apiGroups: ["*"], resources: ["*"], clusterScope: true, namespaces: ["*"]}]
"""


def test_a_full_level_answers_429(apf_cluster: Cluster) -> None:
    apf_cluster.ok("apply", "-f", "-", input=TINY_LEVEL)
    pl = uids(apf_cluster, "prioritylevelconfigurations")["tiny"]
    fs = uids(apf_cluster, "flowschemas")["aaa-flood"]
    deadline = time.monotonic() + 15
    while True:  # the dispatcher picks the new objects up from its watch
        _, headers, _ = call(apf_cluster, "GET", "/api/v1/namespaces/default", token="flood-token")
        if headers.get("x-kubernetes-pf-prioritylevel-uid") == pl or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert headers["x-kubernetes-pf-flowschema-uid"] == fs
    results: list[tuple[int, dict[str, str], bytes]] = []
    barrier = threading.Barrier(40)

    def create(i: int) -> None:
        barrier.wait()
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"flood-{i}"},
                "data": {"v": "x" * 20000}}
        results.append(call(apf_cluster, "POST", "/api/v1/namespaces/default/configmaps", "flood-token", body))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r[0] for r in results)
    assert 201 in codes and 429 in codes, codes
    for status, headers, body in results:
        assert headers["x-kubernetes-pf-flowschema-uid"] == fs
        assert headers["x-kubernetes-pf-prioritylevel-uid"] == pl
        if status == 429:
            assert body == TOO_MANY
            assert headers["retry-after"] == "1"
            assert headers["content-type"] == "text/plain; charset=utf-8"
    # the admin (exempt) is never queued behind the flood
    assert call(apf_cluster, "GET", "/api/v1/namespaces/default")[0] == 200
    status, _, text = call(apf_cluster, "GET", "/metrics")
    metrics = text.decode()
    assert 'apiserver_flowcontrol_rejected_requests_total{flow_schema="aaa-flood",priority_level="tiny",' \
           'reason="queue-full"}' in metrics
    assert 'apiserver_flowcontrol_dispatched_requests_total{flow_schema="aaa-flood",priority_level="tiny"}' in metrics
    assert 'apiserver_flowcontrol_nominal_limit_seats{priority_level="tiny"} 1.0' in metrics
    apf_cluster.ok("delete", "flowschema", "aaa-flood")


def test_metrics_and_tier(apf_cluster: Cluster) -> None:
    call(apf_cluster, "GET", "/api/v1/namespaces/default")
    status, headers, text = call(apf_cluster, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    metrics = text.decode()
    for family in ("apiserver_request_total", "apiserver_request_duration_seconds",
                   "apiserver_current_inflight_requests", "apiserver_flowcontrol_current_executing_requests",
                   "apiserver_flowcontrol_current_inqueue_requests", "apiserver_flowcontrol_rejected_requests_total",
                   "apiserver_flowcontrol_nominal_limit_seats", "apiserver_flowcontrol_request_wait_duration_seconds",
                   "apiserver_flowcontrol_dispatched_requests_total"):
        assert f"# TYPE {family} " in metrics, family
    assert ('apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="namespaces",'
            'scope="resource",subresource="",verb="GET",version="v1"}') in metrics
    assert 'apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",priority_level="exempt"}' in metrics
    assert 'apiserver_flowcontrol_request_wait_duration_seconds_bucket{execute="true",flow_schema="exempt",' \
           'le="0.005",priority_level="exempt"}' in metrics
    # kube's --max-requests-inflight 1: one seat in all, every limited level gets at least one
    assert 'apiserver_flowcontrol_nominal_limit_seats{priority_level="workload-low"} 1.0' in metrics
    assert 'ultraplane_apiserver_tier_seats{tier="standard"} 1.0' in metrics
    tier = json.loads(call(apf_cluster, "GET", "/debug/ultraplane/tier")[2])
    assert (tier["tier"], tier["seats"], tier["adaptive"], tier["databaseQuotaBytes"]) == ("standard", 1, False,
                                                                                           8 * 1024**3)


def test_database_quota_error_is_etcds(tmp_path: Path) -> None:
    c = start_cluster("inprocess", "--quota-backend-bytes", "400000")
    try:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ""}, "data": {"v": "x" * 100000}}
        status, payload = 201, b""
        for i in range(10):
            body["metadata"]["name"] = f"big-{i}"
            status, _, payload = call(c, "POST", "/api/v1/namespaces/default/configmaps", body=body)
            if status != 201:
                break
        assert status == 500
        assert json.loads(payload) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                       "message": "etcdserver: mvcc: database space exceeded", "code": 500}
        out = c.kubectl("create", "configmap", "one-more", "--from-literal=a=b")
        assert "etcdserver: mvcc: database space exceeded" in out.stderr
        assert c.kubectl("get", "ns", "default").returncode == 0  # reads keep working
    finally:
        c.stop()
        shutil.rmtree(c.work_dir, ignore_errors=True)


def test_flowcontrol_on_both_backends(cluster: Cluster) -> None:
    """The APF objects are created and the dispatcher runs over real etcd 3.4 as over the in-process store."""
    levels = {o["metadata"]["name"] for o in cluster.json("get", "prioritylevelconfigurations")["items"]}
    assert levels == {"exempt", "system", "node-high", "leader-election", "workload-high", "workload-low",
                      "global-default", "catch-all"}
    schemas = uids(cluster, "flowschemas")
    assert len(schemas) == 13
    status, headers, _ = call(cluster, "GET", "/api/v1/namespaces/default")
    assert status == 200 and headers["x-kubernetes-pf-flowschema-uid"] == schemas["exempt"]
    tier = json.loads(call(cluster, "GET", "/debug/ultraplane/tier")[2])
    assert (tier["tier"], tier["seats"], tier["adaptive"]) == ("standard", 60, True)
