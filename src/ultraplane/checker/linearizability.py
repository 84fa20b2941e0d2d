"""Linearizability checking of etcd-like KV histories (Wing & Gong search, Lowe's memoization).

A history is a list of :class:`Operation`: who ran it, when it was invoked and when it completed
(``time.monotonic_ns`` or any monotone clock), its input and its output. ``complete=None`` means
the outcome is unknown (error, timeout, client crash): such an operation may have taken effect at
any point after its invocation, or never. The checker searches for a total order of the operations
that (1) respects real time (if A completed before B was invoked, A comes first), (2) contains every
completed operation and any subset of the unknown ones, and (3) is a legal run of the sequential
model, producing exactly the recorded outputs.

Model (sequential specification)
    state = (revision, {key: (value, mod_revision)})
    get(k)        -> (value, mod_revision) or None, and the header revision (== state revision)
    put(k, v)     -> revision + 1; k's mod_revision becomes that revision
    delete(k)     -> deleted count (1 or 0); revision + 1 only if something was deleted
    txn(cmps, success, failure)
                  -> compare every Cmp against the state (value or mod_revision; a missing key has
                     mod_revision 0 and matches no value comparison except "!="), run the chosen
                     branch's ops in order against the evolving state; the whole txn bumps the
                     revision by exactly one if any op wrote (every write of the txn gets that
                     mod_revision); outputs succeeded, the header revision and one result per op.
    Header revisions may be given as None in an output to skip that check.

Why there is no P-compositional (per-key) partitioning
    Herlihy & Wing's locality lets one check each object separately, and porcupine partitions a
    KV history by key. That is only sound when the objects are independent. Here they are not:
    the revision counter is one object shared by all keys. A put on ``a`` that returned 7 and a
    put on ``b`` that returned 8 must be linearized a-before-b; reads report mod_revisions and
    header revisions drawn from the same counter; a txn comparing ``mod_revision`` of ``a`` is
    a read of that counter. Checked per key, a history where ``b``'s write is ordered before
    ``a``'s by revision but after it in real time (or two writes returning the same revision on
    different keys) would pass each partition yet is not linearizable. Projecting the revisions
    away would restore locality but throws away exactly the checks asked for (monotone revisions,
    exact ``prev + 1``, reads of the last write's mod_revision). So the search is global.

Global search
    Depth-first search over "which operation is linearized next", as in Wing & Gong, restricted
    (Lowe's just-in-time linearization) to operations invoked before the earliest completion among
    the completed operations not yet linearized -- anything else would violate real time. Lowe's
    memoization prunes a branch when the pair (bitset of linearized operations, model state) was
    already explored: the future of the search depends only on that pair. The state is small and
    hashable (revision + sorted tuple of live keys), the bitset is a Python int. Worst case is
    exponential in concurrency (not in length); with the two reductions below, generated
    linearizable histories of 1000-2000 ops from 5-20 clients take a few thousand steps (well
    under a second). Equal timestamps count as concurrent (invoke <= completion is eligible). Two bounds keep it safe: histories
    longer than ``max_ops`` are refused (ValueError), and after ``max_steps`` explored nodes the
    result says ``exhausted`` (neither proven nor refuted).

Reads go first
    An eligible completed operation that is legal in the current state and writes nothing (a get,
    a delete that reported 0 deleted, a txn whose recorded branch only reads) is linearized at once,
    without branching. This loses no linearization: its recorded output says it writes nothing
    wherever it is legal, so in any successful continuation it can be moved to the front (it is
    eligible, so nothing still pending had to precede it in real time, and removing it from later
    leaves every other step's state unchanged). Unknown-outcome operations are never absorbed this
    way (a txn whose compare fails now might succeed and write later). Only writes are permuted,
    which keeps the search near-linear for read-heavy histories with many clients.

Revision ownership and unknown outcomes
    A completed write reports the revision it created. When the model's next revision r is one
    that a completed write W reported, only W can be linearized as the next writer (any other
    write would take r, and revisions never repeat), so other writes are not tried there. An
    unknown-outcome op is only tried where it changes the state (leaving it out is always allowed),
    and an unknown op that cannot write at all (gets only) is dropped up front. Together these
    confine unknown writes to the revision holes nobody observed, which is what keeps histories
    with failed/timed-out writes tractable; the cost still grows with the number of unknown writes
    that overlap in time when the recorded outputs omit revisions.

On failure the result explains the deepest point the search reached: the longest prefix it could
linearize, the model state after it, and the operations that were eligible next but none of which
could be applied or led anywhere (the "stuck" operations) -- the minimal evidence of the violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Key = bytes
KVRead = tuple[bytes, int] | None  # (value, mod_revision) or absent


@dataclass(frozen=True, slots=True)
class Get:
    key: Key


@dataclass(frozen=True, slots=True)
class Put:
    key: Key
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: Key


SimpleOp = Get | Put | Delete


@dataclass(frozen=True, slots=True)
class Cmp:
    """One txn comparison: ``target`` of ``key`` ``op`` ``operand``."""

    key: Key
    target: Literal["value", "mod"]
    op: Literal["=", "!=", "<", ">"]
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class Txn:
    compares: tuple[Cmp, ...] = ()
    success: tuple[SimpleOp, ...] = ()
    failure: tuple[SimpleOp, ...] = ()


Input = Get | Put | Delete | Txn


@dataclass(frozen=True, slots=True)
class GetOutput:
    kv: KVRead
    revision: int | None = None  # header revision


@dataclass(frozen=True, slots=True)
class PutOutput:
    revision: int


@dataclass(frozen=True, slots=True)
class DeleteOutput:
    deleted: int
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class TxnOutput:
    """``results``: per executed op, a KVRead for a Get, None for a Put, deleted count for a Delete."""

    succeeded: bool
    revision: int | None
    results: tuple[KVRead | int, ...] = ()


Output = GetOutput | PutOutput | DeleteOutput | TxnOutput


@dataclass(slots=True)
class Operation:
    client: int
    invoke: int
    complete: int | None  # None: unknown outcome (may or may not have taken effect)
    input: Input
    output: Output | None = None

    def describe(self) -> str:
        end = "?" if self.complete is None else str(self.complete)
        return f"client {self.client} [{self.invoke}, {end}] {self.input} -> {self.output}"


@dataclass(frozen=True, slots=True)
class KVState:
    """Model state: the store revision and the live keys as a sorted tuple (hashable)."""

    revision: int = 0
    items: tuple[tuple[Key, bytes, int], ...] = ()

    @staticmethod
    def of(revision: int, kvs: dict[Key, tuple[bytes, int]]) -> KVState:
        return KVState(revision, tuple(sorted((k, v, m) for k, (v, m) in kvs.items())))

    def as_dict(self) -> dict[Key, tuple[bytes, int]]:
        return {k: (v, m) for k, v, m in self.items}


@dataclass(slots=True)
class CheckResult:
    ok: bool
    exhausted: bool = False  # the step budget ran out: neither proven nor refuted
    steps: int = 0
    linearization: list[int] = field(default_factory=list)  # op indices, on success
    longest_prefix: list[int] = field(default_factory=list)  # on failure
    stuck: list[int] = field(default_factory=list)  # eligible ops none of which could go next
    state_at_failure: KVState | None = None
    operations: Sequence[Operation] = ()

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({len(self.linearization)} ops, {self.steps} steps)"
        if self.exhausted:
            return f"undecided: step budget exhausted after {self.steps} steps"
        lines = [
            f"not linearizable: after a prefix of {len(self.longest_prefix)} ops, model state "
            f"{self.state_at_failure}, none of these could be linearized next:"
        ]
        lines += [f"  #{i}: {self.operations[i].describe()}" for i in self.stuck]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- the model


def _as_txn(inp: Input, out: Output | None) -> tuple[Txn, TxnOutput | None]:
    if isinstance(inp, Txn):
        if out is not None and not isinstance(out, TxnOutput):
            raise TypeError(f"txn output must be TxnOutput, not {type(out).__name__}")
        return inp, out
    txn = Txn((), (inp,), ())
    if out is None:
        return txn, None
    if isinstance(inp, Get) and isinstance(out, GetOutput):
        return txn, TxnOutput(True, out.revision, (out.kv,))
    if isinstance(inp, Put) and isinstance(out, PutOutput):
        return txn, TxnOutput(True, out.revision, (None,))
    if isinstance(inp, Delete) and isinstance(out, DeleteOutput):
        return txn, TxnOutput(True, out.revision, (out.deleted,))
    raise TypeError(f"output {out!r} does not match input {inp!r}")


def _compare(cmp: Cmp, kvs: dict[Key, tuple[bytes, int]]) -> bool:
    cur = kvs.get(cmp.key)
    if cmp.target == "value":
        if cur is None:
            return cmp.op == "!="
        have: bytes | int = cur[0]
    else:
        have = 0 if cur is None else cur[1]
    want = cmp.operand
    if type(have) is not type(want):
        raise TypeError(f"compare {cmp} has an operand of the wrong type")
    if cmp.op == "=":
        return have == want
    if cmp.op == "!=":
        return have != want
    if cmp.op == "<":
        return have < want  # type: ignore[operator]
    return have > want  # type: ignore[operator]


def _may_write(txn: Txn) -> bool:
    return any(not isinstance(op, Get) for op in (*txn.success, *txn.failure))


def _output_writes(txn: Txn, out: TxnOutput) -> bool:
    """Does the recorded outcome say this op created a revision?"""
    branch = txn.success if out.succeeded else txn.failure
    if len(out.results) != len(branch):
        return False
    return any(
        isinstance(op, Put) or (isinstance(op, Delete) and res == 1)
        for op, res in zip(branch, out.results, strict=True)
    )


def step(state: KVState, inp: Txn, out: TxnOutput | None) -> KVState | None:
    """Apply ``inp`` to ``state``; None if the recorded output ``out`` is impossible there.

    ``out=None`` (unknown outcome) accepts whatever the model produces."""
    kvs = state.as_dict()
    ok = all(_compare(c, kvs) for c in inp.compares)
    if out is not None and out.succeeded != ok:
        return None
    ops = inp.success if ok else inp.failure
    if out is not None and len(out.results) != len(ops):
        return None
    new_rev = state.revision + 1
    wrote = False
    for i, op in enumerate(ops):
        if isinstance(op, Get):
            got: KVRead | int = kvs.get(op.key)
        elif isinstance(op, Put):
            kvs[op.key] = (op.value, new_rev)
            wrote = True
            got = None
        else:
            got = 1 if kvs.pop(op.key, None) is not None else 0
            wrote = wrote or got == 1
        if out is not None and out.results[i] != got:
            return None
    rev = new_rev if wrote else state.revision
    if out is not None and out.revision is not None and out.revision != rev:
        return None
    if not wrote:
        return state
    return KVState.of(rev, kvs)


# ---------------------------------------------------------------------------- the search


def check_history(
    ops: Sequence[Operation],
    initial: KVState | None = None,
    *,
    max_ops: int = 5000,
    max_steps: int = 2_000_000,
) -> CheckResult:
    """Is ``ops`` linearizable against the KV model starting from ``initial``?"""
    if len(ops) > max_ops:
        raise ValueError(f"history of {len(ops)} ops exceeds max_ops={max_ops}")
    state0 = initial if initial is not None else KVState()
    n = len(ops)
    inputs: list[tuple[Txn, TxnOutput | None]] = []
    for i, op in enumerate(ops):
        if op.complete is not None and op.complete < op.invoke:
            raise ValueError(f"op #{i} completes before it is invoked")
        if op.complete is not None and op.output is None:
            raise ValueError(f"op #{i} completed without an output")
        inputs.append(_as_txn(op.input, op.output if op.complete is not None else None))

    # an unknown-outcome op that writes nothing in either branch can be left out of any
    # linearization: it constrains nothing, so it is not offered to the search at all
    by_invoke = sorted(
        (i for i in range(n) if ops[i].complete is not None or _may_write(inputs[i][0])),
        key=lambda i: ops[i].invoke,
    )
    # revision -> the completed ops whose output says they wrote at that revision: when the next
    # revision is claimed, no other op may be the one to write it
    claimed: dict[int, set[int]] = {}
    for i, (txn, out) in enumerate(inputs):
        if out is not None and out.revision is not None and _output_writes(txn, out):
            claimed.setdefault(out.revision, set()).add(i)
    completed = sorted((i for i in range(n) if ops[i].complete is not None), key=lambda i: ops[i].complete or 0)
    need = 0
    for i in completed:
        need |= 1 << i

    def candidates(done: int) -> list[int]:
        frontier: int | None = None
        for i in completed:
            if not (done >> i) & 1:
                frontier = ops[i].complete
                break
        out: list[int] = []
        for i in by_invoke:
            if frontier is not None and ops[i].invoke > frontier:
                break
            if not (done >> i) & 1:
                out.append(i)
        return out

    def absorb_reads(done: int, state: KVState) -> tuple[int, list[int]]:
        """Linearize, right away, every eligible completed op that is legal here and writes
        nothing (see "Reads go first" in the module docstring)."""
        taken: list[int] = []
        changed = True
        while changed:
            changed = False
            for i in candidates(done):
                if ops[i].complete is None:
                    continue
                txn, out = inputs[i]
                if step(state, txn, out) is state:
                    done |= 1 << i
                    taken.append(i)
                    changed = True
        return done, taken

    steps = 0
    root_done, root_taken = absorb_reads(0, state0)
    path: list[int] = list(root_taken)
    seen: set[tuple[int, KVState]] = {(root_done, state0)}
    # explicit DFS stack: (done bitset, state, candidates not yet tried, ops this node added to
    # path); path = the linearization chosen so far
    stack: list[tuple[int, KVState, list[int], int]] = [(root_done, state0, candidates(root_done), 0)]
    best_prefix: list[int] = []
    best_stuck: list[int] = []
    best_state = state0
    best_depth = -1
    while stack:
        done, state, cands, _ = stack[-1]
        if done & need == need:
            return CheckResult(True, steps=steps, linearization=list(path), operations=ops)
        if len(path) > best_depth:
            best_depth = len(path)
            best_prefix = list(path)
            best_stuck = list(cands)
            best_state = state
        advanced = False
        while cands:
            i = cands.pop(0)
            steps += 1
            if steps > max_steps:
                return CheckResult(False, exhausted=True, steps=steps, operations=ops)
            txn, out = inputs[i]
            nxt = step(state, txn, out)
            if nxt is None:
                continue
            if out is None and nxt is state:
                continue  # an unknown op that changes nothing here: same as leaving it out
            if nxt is not state:
                owners = claimed.get(state.revision + 1)
                if owners is not None and i not in owners:
                    continue  # the revision it would take belongs to another (completed) write
            ndone, taken = absorb_reads(done | (1 << i), nxt)
            key = (ndone, nxt)
            if key in seen:
                continue
            seen.add(key)
            path.append(i)
            path.extend(taken)
            stack.append((ndone, nxt, candidates(ndone), 1 + len(taken)))
            advanced = True
            break
        if not advanced:
            added = stack.pop()[3]
            del path[len(path) - added :]
    stuck = [i for i in best_stuck if ops[i].complete is not None] or best_stuck
    return CheckResult(
        False,
        steps=steps,
        longest_prefix=best_prefix,
        stuck=stuck,
        state_at_failure=best_state,
        operations=ops,
    )


def initial_state(revision: int, kvs: Iterable[tuple[Key, bytes, int]] = ()) -> KVState:
    """Model state for a store at ``revision`` holding ``kvs`` (key, value, mod_revision)."""
    return KVState(revision, tuple(sorted(kvs)))
