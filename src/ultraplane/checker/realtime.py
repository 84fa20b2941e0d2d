"""Revision order in real time: a linear-time scan that counts one class of linearizability
violations exactly, over histories of any length.

Every etcd response carries the store revision it was served at (a write: the revision it
created; a read: the revision it read). If operation A completed before operation B was invoked,
a linearizable store serves B at a revision no older than A's. A *stale read* is a completed read
(a get, or a txn that wrote nothing) served at a revision older than that of an operation that
completed before the read began, e.g. a get answered at revision 27 after a put had returned
revision 30 to another client. A *stale write* is the same for an operation that wrote.

The full search (``linearizability.check_history``) decides whether a history is linearizable
but stops at the first contradiction and is bounded in length; this scan needs no search, so it
counts every violation of this shape in histories of tens of thousands of operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ultraplane.checker.linearizability import (
    DeleteOutput,
    GetOutput,
    Operation,
    PutOutput,
    TxnOutput,
    _as_txn,
    _output_writes,
)


@dataclass(frozen=True, slots=True)
class StaleOperation:
    kind: str  # "stale read" or "stale write"
    op: int  # index of the operation served too old
    revision: int  # the revision it was served at
    newer: int  # index of an operation that completed before it began
    newer_revision: int  # ... at this (higher) revision


@dataclass(slots=True)
class RealtimeResult:
    checked: int  # completed operations with a revision
    violations: list[StaleOperation] = field(default_factory=list)
    operations: Sequence[Operation] = ()

    @property
    def ok(self) -> bool:
        return not self.violations

    def explain(self, limit: int = 10) -> str:
        if self.ok:
            return f"revision order holds in real time ({self.checked} operations)"
        lines = [f"{len(self.violations)} operations served at a revision older than one that completed "
                 f"before they began ({self.checked} operations):"]
        for v in self.violations[:limit]:
            lines.append(f"  {v.kind}: #{v.op} at revision {v.revision}: {self.operations[v.op].describe()}")
            lines.append(f"    after #{v.newer} at revision {v.newer_revision}: "
                         f"{self.operations[v.newer].describe()}")
        return "\n".join(lines)


def served_revision(op: Operation) -> int | None:
    """The header revision a completed operation was served at, if recorded."""
    if op.complete is None or op.output is None:
        return None
    out = op.output
    if isinstance(out, GetOutput | DeleteOutput | TxnOutput | PutOutput):
        return out.revision
    return None


def _wrote(op: Operation) -> bool:
    txn, out = _as_txn(op.input, op.output)
    return out is not None and _output_writes(txn, out)


def check_realtime_order(ops: Sequence[Operation]) -> RealtimeResult:
    """Every completed operation served at a revision older than the newest revision among the
    operations that completed strictly before it was invoked."""
    revs = [served_revision(op) for op in ops]
    done = sorted((i for i, r in enumerate(revs) if r is not None), key=lambda i: ops[i].complete or 0)
    by_invoke = sorted(done, key=lambda i: ops[i].invoke)
    out: list[StaleOperation] = []
    newest_rev, newest_op, pos = -1, -1, 0
    for i in by_invoke:
        invoke = ops[i].invoke
        while pos < len(done) and (ops[done[pos]].complete or 0) < invoke:
            j = done[pos]
            rev_j = revs[j]
            assert rev_j is not None
            if rev_j > newest_rev:
                newest_rev, newest_op = rev_j, j
            pos += 1
        rev_i = revs[i]
        assert rev_i is not None
        if rev_i < newest_rev:
            kind = "stale write" if _wrote(ops[i]) else "stale read"
            out.append(StaleOperation(kind, i, rev_i, newest_op, newest_rev))
    return RealtimeResult(len(done), out, ops)
