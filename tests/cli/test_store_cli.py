"""`ultraplane store` refuses bad starts with a clear error and exit status 1, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import Server, child_env, free_port, ultraplane_command


def run_store(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ultraplane_command(), "store", *flags], capture_output=True, text=True,
                          timeout=60, env=child_env())


def test_second_process_on_the_same_data_dir_is_refused() -> None:
    first = Server(kind="ultraplane", label="first")
    first.start()
    try:
        url = f"http://127.0.0.1:{free_port()}"
        second = run_store("--data-dir", first.data_dir, "--listen-client-urls", url, "--advertise-client-urls", url)
        assert second.returncode == 1
        assert "is in use by another ultraplane process" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.etcdctl("put", "still", "serving").returncode == 0
    finally:
        first.stop()
        first.cleanup()


def test_bad_listen_url_is_refused(tmp_path: Path) -> None:
    result = run_store("--data-dir", str(tmp_path / "d"), "--listen-client-urls", "foo")
    assert result.returncode == 1
    assert "invalid value 'foo' for flag --listen-client-urls" in result.stderr


def test_https_without_certificates_is_refused(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    result = run_store("--data-dir", str(tmp_path / "d"), "--listen-client-urls", url)
    assert result.returncode == 1
    assert "--cert-file, --key-file" in result.stderr
