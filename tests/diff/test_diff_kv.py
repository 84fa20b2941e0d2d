"""KV: put/get/del through etcdctl, every output compared between etcd and ultraplane.

Tests share one server pair; each uses its own key prefix, and every test writes before it reads,
so revisions are compared exactly (both sides see the same sequence of writes).
"""

from __future__ import annotations

from harness import Recorder, ServerPair, assert_steps_same

J = ("-w", "json")


def _seed(rec: Recorder, prefix: str) -> None:
    # a deliberately unsorted write order, with overwrites, so sort orders differ
    for key, value in [("b", "2"), ("a", "3"), ("d", "1"), ("c", "4"), ("a", "5"), ("e", "0"), ("b", "9")]:
        rec("put", f"{prefix}{key}", value, *J)


def test_put_and_get_basic(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/basic/"
        rec("put", f"{p}k", "v1")
        rec("put", f"{p}k", "v2", "--prev-kv")
        rec("put", f"{p}k", "v3", "--prev-kv", *J)
        rec("get", f"{p}k")
        rec("get", f"{p}k", *J)
        rec("get", f"{p}missing", *J)
        rec("get", f"{p}missing")
        rec("put", f"{p}empty", "", *J)
        rec("get", f"{p}empty", *J)
        rec("put", f"{p}k", "--ignore-value", *J)
        rec("get", f"{p}k", *J)
        rec("put", f"{p}nolease", "x", "--ignore-lease", *J)
        rec("put", f"{p}utf8-ключ", "значение", *J)
        rec("get", f"{p}utf8-ключ", *J)
        rec("get", "--hex", f"{p}k")

    assert_steps_same(module_pair, script)


def test_get_ranges(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/range/"
        _seed(rec, p)
        rec("put", "/range0", "outside", *J)
        rec("get", p, "--prefix", *J)
        rec("get", p, "--prefix")
        rec("get", f"{p}b", f"{p}d", *J)
        rec("get", f"{p}b", f"{p}d")
        rec("get", f"{p}c", "--from-key", *J)
        rec("get", f"{p}c", "--from-key", "--keys-only")
        rec("get", p, "--prefix", "--limit", "2", *J)
        rec("get", p, "--prefix", "--limit", "2")
        rec("get", p, "--prefix", "--keys-only", *J)
        rec("get", p, "--prefix", "--keys-only")
        rec("get", p, "--prefix", "--print-value-only")
        rec("get", p, "--prefix", "--consistency=s", *J)
        rec("get", p, "--prefix", "--consistency=l")
        rec("get", f"{p}a", "--consistency=s")

    assert_steps_same(module_pair, script)


def test_get_sort_and_order(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/sort/"
        _seed(rec, p)
        for target in ("KEY", "CREATE", "MODIFY", "VALUE", "VERSION"):
            for order in ("ASCEND", "DESCEND"):
                rec("get", p, "--prefix", "--sort-by", target, "--order", order, *J)
            rec("get", p, "--prefix", "--sort-by", target, "--limit", "3", *J)
        rec("get", p, "--prefix", "--order", "DESCEND", *J)
        rec("get", p, "--prefix", "--order", "DESCEND", "--limit", "2", "--keys-only")
        rec("get", p, "--prefix", "--sort-by", "VALUE", "--order", "ASCEND", "--print-value-only")

    assert_steps_same(module_pair, script)


def test_get_at_revision(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/rev/"
        _, first, _ = rec("put", f"{p}k", "one", *J)
        base = first["header"]["revision"]
        rec("put", f"{p}k", "two", *J)
        rec("put", f"{p}other", "x", *J)
        rec("del", f"{p}k", *J)
        rec("put", f"{p}k", "three", *J)
        for offset in range(0, 5):
            rec("get", p, "--prefix", "--rev", str(base + offset), *J)
        rec("get", f"{p}k", "--rev", str(base - 1), *J)
        rec("get", f"{p}k", "--rev", str(base + 1), "--print-value-only")

    assert_steps_same(module_pair, script)


def test_delete(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/del/"
        _seed(rec, p)
        rec("del", f"{p}a", *J)
        rec("del", f"{p}a")
        rec("del", f"{p}b", "--prev-kv", *J)
        rec("del", f"{p}zz", "--prev-kv", *J)
        rec("del", f"{p}c", f"{p}e", "--prev-kv")
        rec("get", p, "--prefix", *J)
        rec("put", f"{p}x1", "1")
        rec("put", f"{p}x2", "2")
        rec("put", f"{p}y", "3")
        rec("del", f"{p}x", "--prefix", *J)
        rec("del", f"{p}e", "--from-key", "--prev-kv", *J)
        rec("get", p, "--prefix", *J)
        rec("del", p, "--prefix")
        # a key recreated after deletion starts a new version history
        rec("put", f"{p}a", "again", *J)
        rec("get", f"{p}a", *J)

    assert_steps_same(module_pair, script)
