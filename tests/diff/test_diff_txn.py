"""Transactions through `etcdctl txn` (compares, ops and branches read from stdin)."""

from __future__ import annotations

from harness import Recorder, ServerPair, assert_steps_same

J = ("-w", "json")


def _txn(rec: Recorder, compares: list[str], success: list[str], failure: list[str], *flags: str):
    # each section is its lines followed by one blank line (etcdctl reads until the blank line)
    body = "".join("".join(line + "\n" for line in section) + "\n" for section in (compares, success, failure))
    return rec("txn", *flags, input=body)


def test_txn_compares_and_branches(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/txn1/"
        rec("put", f"{p}k", "v1", *J)
        rec("put", f"{p}k", "v2", *J)
        rec("put", f"{p}other", "o", *J)
        _, got, _ = rec("get", f"{p}k", *J)
        kv = got["kvs"][0]
        create, mod = kv["create_revision"], kv["mod_revision"]
        cases = [
            [f'value("{p}k") = "v2"'],
            [f'value("{p}k") = "nope"'],
            [f'value("{p}k") > "v1"'],
            [f'value("{p}k") < "v1"'],
            [f'value("{p}k") != "v1"'],
            [f'version("{p}k") = "2"'],
            [f'version("{p}k") > "5"'],
            [f'ver("{p}missing") = "0"'],
            [f'create("{p}k") = "{create}"'],
            [f'c("{p}k") < "{create}"'],
            [f'mod("{p}k") = "{mod}"'],
            [f'm("{p}k") > "{mod}"'],
            [f'create("{p}missing") = "0"'],
            [f'value("{p}missing") = ""'],
            # several compares: all must hold
            [f'value("{p}k") = "v2"', f'version("{p}other") = "1"'],
            [f'value("{p}k") = "v2"', f'version("{p}other") = "2"'],
        ]
        for compares in cases:
            _txn(rec, compares, [f"get {p}k"], [f"get {p}other"], *J)
            _txn(rec, compares, [f"get {p}k"], [f"get {p}other"])

    assert_steps_same(module_pair, script)


def test_txn_writes(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/txn2/"
        rec("put", f"{p}a", "1", *J)
        # success branch with several writes: one revision for the whole txn
        _txn(rec, [f'value("{p}a") = "1"'],
             [f"put {p}b 2", f"put {p}c 3", f"del {p}a", f"get {p} --prefix"], [f"put {p}fail x"], *J)
        rec("get", p, "--prefix", *J)
        # failure branch
        _txn(rec, [f'value("{p}a") = "1"'], [f"put {p}ok x"], [f"put {p}d 4", f"get {p}d"], *J)
        rec("get", p, "--prefix", *J)
        # no compares: success branch runs
        _txn(rec, [], [f"put {p}e 5", f"get {p}e"], [], *J)
        # read-only txn: no new revision
        _txn(rec, [], [f"get {p} --prefix --keys-only"], [], *J)
        # prev-kv on put/del ops, range delete, empty branches
        _txn(rec, [], [f"put {p}b 22 --prev-kv", f"del {p}c --prev-kv"], [], *J)
        _txn(rec, [f'value("{p}b") = "nope"'], [f"put {p}x 1"], [], *J)
        _txn(rec, [], [f"del {p} --prefix"], [], *J)
        rec("get", p, "--prefix", *J)
        # put then get of the same key inside one txn sees the new value
        _txn(rec, [], [f"put {p}same v", f"get {p}same"], [], *J)
        _txn(rec, [], [f"put {p}same v2", f"get {p}same"], [])
        # get flags inside txn
        for i in range(5):
            rec("put", f"{p}s{i}", str(4 - i))
        _txn(rec, [], [f"get {p}s --prefix --limit 2 --sort-by=VALUE --order=DESCEND",
                       f"get {p}s3 {p}s5"], [], *J)

    assert_steps_same(module_pair, script)


def test_txn_errors(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/txn3/"
        rec("put", f"{p}k", "v", *J)
        _txn(rec, [], [f"put {p}dup 1", f"put {p}dup 2"], [], *J)
        _txn(rec, [], [f"put {p}dup 1", f"del {p}dup"], [], *J)
        _txn(rec, [], [f"put {p}d1 1", f"del {p}d --prefix"], [], *J)
        _txn(rec, [], [f"put {p}dup 1"], [f"put {p}dup 2"], *J)  # different branches: allowed
        rec("get", f"{p}dup", *J)
        _txn(rec, [], [f"get {p}k", f"get {p}k"], [], *J)  # reads may repeat
        _txn(rec, [], [f"put {p}x 1", f"del {p}x"], [])
        # too many operations (default --max-txn-ops is 128)
        _txn(rec, [], [f"put {p}many{i} v" for i in range(129)], [], *J)
        _txn(rec, [], [f"put {p}many{i} v" for i in range(128)], [], *J)
        rec("get", p, "--prefix", "--keys-only", "--limit", "3", *J)

    assert_steps_same(module_pair, script)
