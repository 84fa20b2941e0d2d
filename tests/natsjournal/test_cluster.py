from __future__ import annotations

import nats

from ultraplane.natscluster import NatsCluster, ensure_stream


def test_cluster_forms_with_meta_leader(cluster: NatsCluster) -> None:
    leader = cluster.meta_leader()
    assert leader in {n.name for n in cluster.nodes}
    for node in cluster.nodes:
        doc = cluster.jsz(node.index)
        assert doc is not None
        assert doc["meta_cluster"]["cluster_size"] == 3


async def test_r3_stream_accepts_writes(cluster: NatsCluster, stream_name: str) -> None:
    await ensure_stream(cluster.urls, stream_name, replicas=3, subjects=[f"{stream_name}.x"])
    await ensure_stream(cluster.urls, stream_name, replicas=3, subjects=[f"{stream_name}.x"])  # idempotent
    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream()
        acks = [await js.publish(f"{stream_name}.x", f"m{i}".encode()) for i in range(5)]
        assert [a.seq for a in acks] == [1, 2, 3, 4, 5]
        info = await js.stream_info(stream_name)
        assert info.config.num_replicas == 3
        assert info.state.messages == 5
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()
