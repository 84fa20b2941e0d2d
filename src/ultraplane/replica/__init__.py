"""Replicated store members over one NATS JetStream journal (issue 3): writer election by a
JetStream KV lease, followers tailing the stream, writes forwarded over NATS request/reply."""

from ultraplane.replica.member import ReplicaConfig, ReplicaMember, Role

__all__ = ["ReplicaConfig", "ReplicaMember", "Role"]
