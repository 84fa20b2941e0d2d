"""The scheduler's leader election: the shared elector of client/leader.py on kube-system/kube-scheduler."""

from ultraplane.client.leader import LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S, LeaderElector

__all__ = ["LEASE_DURATION_S", "RENEW_DEADLINE_S", "RETRY_PERIOD_S", "LeaderElector"]
