"""Correctness tooling: a linearizability checker, a watch-guarantee checker, and recorders.

``linearizability``  Wing & Gong / Lowe style search over a recorded KV history (etcd model)
``realtime``         revision order in real time: counts stale reads/writes in histories of any length
``watch``            ordering, uniqueness, atomicity, gap, prev_kv and cross-member checks
``history``          grpc.aio helpers that record histories and watch streams from an endpoint
"""

from ultraplane.checker.linearizability import (
    CheckResult,
    Cmp,
    Delete,
    DeleteOutput,
    Get,
    GetOutput,
    KVState,
    Operation,
    Put,
    PutOutput,
    Txn,
    TxnOutput,
    check_history,
    initial_state,
)
from ultraplane.checker.realtime import RealtimeResult, StaleOperation, check_realtime_order
from ultraplane.checker.watch import WatchCheckResult, WatchEvent, WatchStream, check_watches

__all__ = [
    "CheckResult",
    "Cmp",
    "Delete",
    "DeleteOutput",
    "Get",
    "GetOutput",
    "KVState",
    "RealtimeResult",
    "StaleOperation",
    "Operation",
    "Put",
    "PutOutput",
    "Txn",
    "TxnOutput",
    "WatchCheckResult",
    "WatchEvent",
    "WatchStream",
    "check_history",
    "check_realtime_order",
    "initial_state",
    "check_watches",
]
