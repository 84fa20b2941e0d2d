"""`ultraplane registry` argument handling, in-process: user management and refused bad flags."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ultraplane.cli.main import build_parser
from ultraplane.registry.auth import UserStore


def main(argv: list[str]) -> int:
    """The CLI's parsing and dispatch, without main()'s process-wide logging and GC settings."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


def test_set_user_stores_a_hash_and_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert main(["registry", "--data-dir", str(tmp_path), "--set-user", "ci", "--access", "team/*=pull,push"]) == 0
    assert "user ci saved" in capsys.readouterr().out
    stored = json.loads((tmp_path / "auth" / "users.json").read_text())["users"]["ci"]
    assert stored["access"] == ["team/*=pull,push"] and "s3cret-pass" not in stored["password"]
    assert (tmp_path / "auth" / "users.json").stat().st_mode & 0o077 == 0
    users = UserStore(tmp_path / "auth" / "users.json")
    assert users.authenticate("ci", "s3cret-pass") and not users.authenticate("ci", "wrong")


def test_bad_flags_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["registry", "--data-dir", str(tmp_path), "--set-user", "x", "--access", "team/*=fly"]) == 2
    assert "bad access rule" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["registry", "--data-dir", str(tmp_path), "--set-user", "x"]) == 2
    assert main(["registry", "--data-dir", str(tmp_path), "--listen", "no-port"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
