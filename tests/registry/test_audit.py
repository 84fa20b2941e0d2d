"""The hash-chained audit log: what pushes (skopeo and the API), deletes, signatures and verifications record,
the admin-only query API, and `ultraplane registry audit-verify` catching edited, reordered and removed
records on a copy of the live log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.registry.conftest import REPO_ROOT, Client, RegistryProcess
from tests.registry.images import build_image, write_oci_layout
from tests.registry.oci import push_image
from tests.registry.test_skopeo import dest_flags, skopeo
from ultraplane.cli.main import build_parser
from ultraplane.registry.audit import record_hash


def audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ultraplane", "registry", "audit-verify", "--data-dir",
                           str(data_dir)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def audit_verify_in_process(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = build_parser().parse_args(["registry", "audit-verify", "--data-dir", str(data_dir)])
    code = int(args.run(args))
    return code, capsys.readouterr().out


def records(client: Client, **params: str) -> list[dict]:
    response = client.request("GET", "/ultraplane/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def test_actions_are_recorded_with_who_what_when_where(signing_registry: RegistryProcess, signing_admin: Client,
                                                       tmp_path: Path) -> None:
    started = time.time() - 1
    image = build_image([{"etc/motd": b"audited\n"}])
    layout = write_oci_layout(tmp_path / "layout", {"v1": image})
    skopeo("copy", *dest_flags(signing_registry), f"oci:{layout}:v1",
           f"docker://{signing_registry.host}/signed/audited:v1")
    assert signing_admin.request("POST", "/ultraplane/v1/signing/verify",
                                 json={"repository": "signed/audited", "reference": "v1"}).json()["verified"]
    assert signing_admin.request("DELETE", f"/v2/signed/audited/manifests/{image.digest}").status_code == 202

    found = records(signing_admin, repository="signed/audited", since=str(started))
    actions = [record["action"] for record in found]
    push = next(r for r in found if r["action"] == "push" and r["digest"] == image.digest)
    assert push["who"] == "admin" and push["from"] == "127.0.0.1" and push["reference"] == "v1"
    assert push["time"].endswith("Z") and push["ts"] >= started
    assert actions.index("sign") > actions.index("push")
    sign = next(r for r in found if r["action"] == "sign")
    assert sign["digest"] == image.digest and sign["detail"]["byPolicy"] is True
    assert next(r for r in found if r["action"] == "verify")["detail"]["verified"] is True
    delete = next(r for r in found if r["action"] == "delete")
    assert delete["digest"] == image.digest and delete["who"] == "admin"
    assert [r["action"] for r in records(signing_admin, repository="signed/audited", action="delete")] == ["delete"]
    assert records(signing_admin, repository="signed/audited", since=str(time.time() + 60)) == []
    for older, newer in zip(found, found[1:], strict=False):
        assert newer["seq"] > older["seq"]
        assert record_hash(newer) == newer["hash"]


def test_query_needs_admin_and_valid_parameters(signing_registry: RegistryProcess, signing_admin: Client) -> None:
    anonymous = Client(signing_registry.url, signing_registry.ca_cert)
    bare = anonymous.session.get(signing_registry.url + "/ultraplane/v1/audit", verify=signing_registry.ca_cert)
    assert bare.status_code == 401 and 'scope="registry:catalog:*"' in bare.headers["WWW-Authenticate"]
    refused = anonymous.request("GET", "/ultraplane/v1/audit")  # an anonymous token: no admin scope
    assert refused.status_code == 403 and refused.json()["errors"][0]["code"] == "DENIED"
    bad = signing_admin.request("GET", "/ultraplane/v1/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.json()["errors"][0]["message"]


def _copy_log(registry: RegistryProcess, target: Path) -> list[bytes]:
    shutil.copytree(registry.data_dir / "audit", target / "audit")
    lines = (target / "audit" / "audit.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4
    return lines


def test_verifier_detects_edits_reordering_and_removal(signing_registry: RegistryProcess, signing_admin: Client,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = build_image([{"f": b"chain"}])
    push_image(signing_admin, "plain/chain", "v1", image)
    push_image(signing_admin, "plain/chain", "v2", image)
    intact = tmp_path / "intact"
    _copy_log(signing_registry, intact)
    result = audit_verify(intact)
    assert result.returncode == 0 and "audit log intact" in result.stdout, result.stdout + result.stderr

    def tampered(case: str, lines: list[bytes]) -> str:
        directory = tmp_path / case
        (directory / "audit").mkdir(parents=True)
        shutil.copy(intact / "audit" / "head", directory / "audit" / "head")
        (directory / "audit" / "audit.jsonl").write_bytes(b"".join(lines))
        code, out = audit_verify_in_process(directory, capsys)
        assert code == 1, f"{case}: {out}"
        return out

    lines = (intact / "audit" / "audit.jsonl").read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[1])
    edited["who"] = "mallory"
    assert "edited" in tampered("edited", [lines[0], json.dumps(edited).encode() + b"\n", *lines[2:]])
    # An edit that recomputes its own hash still breaks the next record's link.
    edited["hash"] = record_hash(edited)
    assert "prev does not match" in tampered("rehashed", [lines[0], json.dumps(edited).encode() + b"\n",
                                                          *lines[2:]])
    assert "reordered" in tampered("reordered", [lines[1], lines[0], *lines[2:]])
    assert "removed" in tampered("removed-middle", [lines[0], *lines[2:]])
    assert "removed from the end" in tampered("removed-tail", lines[:-1])
