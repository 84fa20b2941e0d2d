"""Backend quota: fill a small store until NOSPACE, then recover with delete+compact+defrag+disarm.

The byte count at which each store runs out of space is implementation-specific, so the number of
successful writes and the revisions after the fill are not compared; everything else is.
"""

from __future__ import annotations

import re

import pytest
from harness import Recorder, ServerPair, assert_steps_same

QUOTA = 2 * 1024 * 1024
VALUE = "x" * (128 * 1024)


def _member_ids(result: tuple[int, object, str]) -> tuple[int, object, str]:
    rc, out, err = result
    if isinstance(out, str):
        out = re.sub(r"memberID:\d+", "memberID:<id>", out)
    return rc, out, err


@pytest.mark.server_flags(f"--quota-backend-bytes={QUOTA}")
def test_nospace_and_recovery(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        ctl = rec.ctl
        rec.note("alarm list (none)", _member_ids(ctl("alarm", "list")))
        first_error = None
        for i in range(400):
            rc, _, err = ctl("put", f"/fill/{i:04d}", input=VALUE)
            if rc != 0:
                first_error = (rc, err)
                break
        rec.note("first failing put", first_error)
        rec.note("alarm list", _member_ids(ctl("alarm", "list")))
        rec.note("put while NOSPACE", ctl("put", "/small", "v"))
        rec.note("txn put while NOSPACE", ctl("txn", input="\nput /small v\n\n\n"))
        rec.note("lease grant while NOSPACE", ctl("lease", "grant", "60")[::2])
        rec.note("get works", ctl("get", "/fill/0000", "--keys-only")[::2])
        rec.note("txn read works", ctl("txn", input="\nget /fill/0000 --keys-only\n\n\n"))
        rec.note("delete works", ctl("del", "/fill/", "--prefix")[0])
        rec.note("still alarmed", ctl("put", "/small", "v"))
        _, status, _ = ctl("get", "/", "-w", "json")
        rec.note("compact", ctl("compact", str(status["header"]["revision"]), "--physical")[::2])
        rec.note("defrag", ctl("defrag"))
        rec.note("disarm", _member_ids(ctl("alarm", "disarm")))
        rec.note("alarm list after", _member_ids(ctl("alarm", "list")))
        rec.note("put after disarm", ctl("put", "/small", "v"))
        rec.note("get after", ctl("get", "/small", "--print-value-only"))

    assert_steps_same(both, script)
