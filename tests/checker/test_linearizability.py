"""Hand-made histories for the KV linearizability checker, plus generated linearizable ones."""

from __future__ import annotations

import random

import pytest

from ultraplane.checker.linearizability import (
    Cmp,
    Delete,
    DeleteOutput,
    Get,
    GetOutput,
    Input,
    KVState,
    Operation,
    Output,
    Put,
    PutOutput,
    Txn,
    TxnOutput,
    check_history,
    step,
)

A, B = b"a", b"b"


def op(client: int, invoke: int, complete: int | None, inp: Input, out: Output | None = None) -> Operation:
    return Operation(client, invoke, complete, inp, out)


def cas(key: bytes, mod: int, value: bytes) -> Txn:
    return Txn((Cmp(key, "mod", "=", mod),), (Put(key, value),), (Get(key),))


# ---------------------------------------------------------------------------- linearizable


def test_sequential_history_passes() -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(0, 2, 3, Get(A), GetOutput((b"1", 2), 2)),
        op(0, 4, 5, Put(B, b"x"), PutOutput(3)),
        op(0, 6, 7, Delete(A), DeleteOutput(1, 4)),
        op(0, 8, 9, Get(A), GetOutput(None, 4)),
        op(0, 10, 11, Delete(A), DeleteOutput(0, 4)),  # nothing deleted: no new revision
    ]
    res = check_history(h, KVState(1))
    assert res.ok, res.explain()
    assert res.linearization == [0, 1, 2, 3, 4, 5]


def test_empty_history_passes() -> None:
    assert check_history([], KVState(5)).ok


@pytest.mark.parametrize("seen", [None, (b"1", 2)])
def test_concurrent_read_may_see_either_side_of_a_write(seen: tuple[bytes, int] | None) -> None:
    h = [
        op(0, 0, 10, Put(A, b"1"), PutOutput(2)),
        op(1, 1, 9, Get(A), GetOutput(seen, 1 if seen is None else 2)),
    ]
    assert check_history(h, KVState(1)).ok


def test_concurrent_writes_may_reorder_against_invocation_order() -> None:
    # b invoked later but got the lower revision: fine, the two overlap
    h = [
        op(0, 0, 10, Put(A, b"1"), PutOutput(3)),
        op(1, 1, 9, Put(B, b"2"), PutOutput(2)),
        op(2, 11, 12, Get(A), GetOutput((b"1", 3), 3)),
        op(2, 13, 14, Get(B), GetOutput((b"2", 2), 3)),
    ]
    res = check_history(h, KVState(1))
    assert res.ok
    assert res.linearization[:2] == [1, 0]


def test_competing_cas_one_wins() -> None:
    init = KVState(5, ((A, b"0", 5),))
    h = [
        op(0, 0, 10, cas(A, 5, b"x"), TxnOutput(True, 6, (None,))),
        op(1, 1, 11, cas(A, 5, b"y"), TxnOutput(False, 6, ((b"x", 6),))),
    ]
    assert check_history(h, init).ok


def test_unknown_outcome_write_may_or_may_not_apply() -> None:
    lost = op(0, 0, None, Put(A, b"maybe"))
    took = [lost, op(1, 5, 6, Get(A), GetOutput((b"maybe", 2), 2))]
    did_not = [lost, op(1, 5, 6, Get(A), GetOutput(None, 1))]
    assert check_history(took, KVState(1)).ok
    assert check_history(did_not, KVState(1)).ok


def test_txn_with_read_and_multi_key_writes() -> None:
    t = Txn((Cmp(A, "value", "=", b"1"),), (Put(A, b"2"), Put(B, b"2"), Get(B)), ())
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(0, 2, 3, t, TxnOutput(True, 3, (None, None, (b"2", 3)))),
        op(0, 4, 5, Get(B), GetOutput((b"2", 3), 3)),
    ]
    assert check_history(h, KVState(1)).ok


# ---------------------------------------------------------------------------- violations


def test_stale_read_fails_and_names_the_read() -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(0, 2, 3, Put(A, b"2"), PutOutput(3)),
        op(1, 4, 5, Get(A), GetOutput((b"1", 2), 3)),
    ]
    res = check_history(h, KVState(1))
    assert not res.ok and not res.exhausted
    assert res.stuck == [2]
    assert res.longest_prefix == [0, 1]
    assert res.state_at_failure == KVState(3, ((A, b"2", 3),))
    assert "#2" in res.explain()


def test_stale_read_is_caught_by_mod_revision_even_with_a_right_header() -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(0, 2, 3, Put(A, b"1"), PutOutput(3)),  # same value again
        op(1, 4, 5, Get(A), GetOutput((b"1", 2), None)),
    ]
    assert not check_history(h, KVState(1)).ok


def test_lost_acknowledged_write_fails() -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(1, 2, 3, Get(A), GetOutput(None, 2)),
    ]
    assert not check_history(h, KVState(1)).ok


def test_read_of_a_value_never_written_fails() -> None:
    h = [
        op(0, 0, 10, Put(A, b"1"), PutOutput(2)),
        op(1, 1, 9, Get(A), GetOutput((b"ghost", 2), 2)),
    ]
    assert not check_history(h, KVState(1)).ok


def test_real_time_order_is_enforced() -> None:
    # the read finished before the write was invoked, yet saw it
    h = [
        op(1, 0, 1, Get(A), GetOutput((b"1", 2), 2)),
        op(0, 2, 3, Put(A, b"1"), PutOutput(2)),
    ]
    assert not check_history(h, KVState(1)).ok


def test_reads_going_back_in_time_fail() -> None:
    h = [
        op(0, 0, 20, Put(A, b"1"), PutOutput(2)),
        op(1, 1, 2, Get(A), GetOutput((b"1", 2), 2)),
        op(1, 3, 4, Get(A), GetOutput(None, 1)),  # after having seen it
    ]
    assert not check_history(h, KVState(1)).ok


@pytest.mark.parametrize(
    "revs",
    [
        (3, 2),  # sequential writes with decreasing revisions
        (2, 2),  # two writes at one revision
        (2, 4),  # a revision skipped
    ],
)
def test_non_monotonic_or_non_consecutive_revisions_fail(revs: tuple[int, int]) -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(revs[0])),
        op(0, 2, 3, Put(B, b"2"), PutOutput(revs[1])),
    ]
    assert not check_history(h, KVState(1)).ok


def test_header_revision_of_a_read_must_be_current() -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(0, 2, 3, Get(B), GetOutput(None, 1)),
    ]
    assert not check_history(h, KVState(1)).ok


def test_concurrent_duplicate_revisions_on_different_keys_fail() -> None:
    # would pass a per-key (partitioned) check: each key alone is fine
    h = [
        op(0, 0, 10, Put(A, b"1"), PutOutput(2)),
        op(1, 0, 10, Put(B, b"1"), PutOutput(2)),
    ]
    assert not check_history(h, KVState(1)).ok


def test_txn_reporting_success_when_compare_is_false_fails() -> None:
    init = KVState(5, ((A, b"0", 5),))
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(6)),
        op(1, 2, 3, cas(A, 5, b"x"), TxnOutput(True, 7, (None,))),
    ]
    assert not check_history(h, init).ok


def test_both_competing_cas_winning_fails() -> None:
    init = KVState(5, ((A, b"0", 5),))
    h = [
        op(0, 0, 10, cas(A, 5, b"x"), TxnOutput(True, 6, (None,))),
        op(1, 1, 11, cas(A, 5, b"y"), TxnOutput(True, 7, (None,))),
    ]
    assert not check_history(h, init).ok


def test_txn_reporting_failure_when_compare_is_true_fails() -> None:
    init = KVState(5, ((A, b"0", 5),))
    h = [op(1, 2, 3, cas(A, 5, b"x"), TxnOutput(False, 5, ((b"0", 5),)))]
    assert not check_history(h, init).ok


def test_delete_must_report_what_it_deleted() -> None:
    assert not check_history([op(0, 0, 1, Delete(A), DeleteOutput(1, 2))], KVState(1)).ok
    assert check_history([op(0, 0, 1, Delete(A), DeleteOutput(0, 1))], KVState(1)).ok


def test_bounds() -> None:
    h = [op(0, 2 * i, 2 * i + 1, Put(A, b"v"), PutOutput(2 + i)) for i in range(11)]
    with pytest.raises(ValueError):
        check_history(h, KVState(1), max_ops=10)
    res = check_history(h, KVState(1), max_steps=3)
    assert res.exhausted and not res.ok
    assert check_history(h, KVState(1)).ok


def test_many_concurrent_readers_do_not_blow_up_the_search() -> None:
    # 40 fully concurrent gets, half before and half after one write: reads are absorbed
    # without branching, so this takes a handful of steps instead of 40! orders
    h = [op(0, 0, 100, Put(A, b"1"), PutOutput(2))]
    h += [op(1 + i, 1, 99, Get(A), GetOutput(None if i % 2 else (b"1", 2), 1 if i % 2 else 2)) for i in range(40)]
    res = check_history(h, KVState(1), max_steps=100)
    assert res.ok, res.explain()


def test_unknown_txn_is_not_forced_early() -> None:
    # the unknown CAS fails (a no-op) at the start but succeeds after the put; a later read
    # shows it applied, so it must stay available to be linearized late
    init = KVState(1)
    h = [
        op(0, 0, None, cas(A, 2, b"cas")),
        op(1, 1, 2, Put(A, b"1"), PutOutput(2)),
        op(1, 3, 4, Get(A), GetOutput((b"cas", 3), 3)),
    ]
    assert check_history(h, init).ok


def test_step_model_directly() -> None:
    s = step(KVState(1), Txn((), (Put(A, b"v"), Delete(A)), ()), None)
    assert s == KVState(2, ())


# ---------------------------------------------------------------------------- generated


def _generate(seed: int, clients: int, per_client: int) -> tuple[list[Operation], KVState]:
    """A linearizable history by construction: each op takes effect at a random point inside
    its [invoke, complete] interval, executed against the model in that order."""
    rng = random.Random(seed)
    keys = [b"k0", b"k1", b"k2"]
    init = KVState(10)
    spans: list[tuple[int, int, int, Input]] = []  # (point, invoke, complete, input)
    for c in range(clients):
        t = rng.randrange(5)
        for i in range(per_client):
            inv = t
            point = inv + rng.randrange(1, 20)
            comp = point + rng.randrange(1, 20)
            t = comp + rng.randrange(1, 5)
            key = rng.choice(keys)
            r = rng.random()
            inp: Input
            if r < 0.4:
                inp = Get(key)
            elif r < 0.7:
                inp = Put(key, f"{c}-{i}".encode())
            elif r < 0.8:
                inp = Delete(key)
            else:
                inp = cas(key, rng.choice([0, 10, 11, 12, 13]), f"{c}-{i}".encode())
            spans.append((point * 100 + c, inv * 100 + c, comp * 100 + c, inp))
    spans.sort()
    state = init
    ops: list[Operation] = []
    for _, inv, comp, inp in spans:
        txn = inp if isinstance(inp, Txn) else Txn((), (inp,), ())
        # run the model to learn the output
        kvs = state.as_dict()
        nxt = step(state, txn, None)
        assert nxt is not None
        outcome = _output(state, kvs, inp, nxt)
        state = nxt
        ops.append(Operation(inv % 100, inv, comp, inp, outcome))
    ops.sort(key=lambda o: o.invoke)
    return ops, init


def _output(before: KVState, kvs: dict[bytes, tuple[bytes, int]], inp: Input, after: KVState) -> Output:
    if isinstance(inp, Get):
        return GetOutput(kvs.get(inp.key), before.revision)
    if isinstance(inp, Put):
        return PutOutput(after.revision)
    if isinstance(inp, Delete):
        return DeleteOutput(1 if inp.key in kvs else 0, after.revision)
    cur = kvs.get(inp.compares[0].key)
    ok = (0 if cur is None else cur[1]) == inp.compares[0].operand
    return TxnOutput(ok, after.revision, (None,) if ok else (cur,))


@pytest.mark.parametrize("seed", range(5))
def test_generated_linearizable_histories_pass(seed: int) -> None:
    ops, init = _generate(seed, clients=5, per_client=60)
    res = check_history(ops, init)
    assert res.ok, res.explain()


@pytest.mark.parametrize("seed", range(5))
def test_generated_history_with_one_corrupted_read_fails(seed: int) -> None:
    ops, init = _generate(seed, clients=5, per_client=60)
    reads = [i for i, o in enumerate(ops) if isinstance(o.input, Get)]
    victim = reads[len(reads) // 2]
    out = ops[victim].output
    assert isinstance(out, GetOutput)
    ops[victim].output = GetOutput((b"never-written", 1), out.revision)
    res = check_history(ops, init)
    assert not res.ok and not res.exhausted
    assert victim in res.stuck


@pytest.mark.parametrize("seed", range(3))
def test_generated_history_with_unknown_outcomes_passes(seed: int) -> None:
    """Some ops lose their outcome (they did happen), and some writes that never happened are
    added as unknown: still linearizable."""
    ops, init = _generate(seed, clients=5, per_client=60)
    rng = random.Random(seed)
    for o in rng.sample(ops, 15):
        o.complete, o.output = None, None
    for n in range(5):
        ops.append(Operation(9, rng.randrange(2000), None, Put(b"k0", f"never-{n}".encode()), None))
    res = check_history(ops, init)
    assert res.ok, res.explain()


def test_larger_generated_history_with_ten_clients() -> None:
    ops, init = _generate(11, clients=10, per_client=150)
    res = check_history(ops, init)
    assert res.ok, res.explain()


def test_unknown_write_fills_an_unobserved_revision() -> None:
    h = [
        op(0, 0, 1, Put(A, b"1"), PutOutput(2)),
        op(1, 2, None, Put(B, b"lost?")),
        op(0, 3, 4, Put(A, b"2"), PutOutput(4)),  # revision 3 was taken by someone
    ]
    assert check_history(h, KVState(1)).ok
    without = [h[0], h[2]]
    assert not check_history(without, KVState(1)).ok
    # ... but only an op invoked before it can have taken it
    late = [h[0], op(1, 5, None, Put(B, b"late")), h[2]]
    assert not check_history(late, KVState(1)).ok
