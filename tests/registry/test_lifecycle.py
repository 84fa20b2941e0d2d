"""Lifecycle policies (ECR's JSON), the preview, archive and restore with their cascade to signatures, the
in-use set, and the background evaluator, against the running `signing_registry` (which signs `signed/*`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import Client, RegistryProcess
from tests.registry.images import Image, build_image, sha256
from tests.registry.oci import error_codes, push_image
from ultraplane.registry.errors import RegistryError
from ultraplane.registry.lifecycle import ImageInfo, evaluate, parse_policy
from ultraplane.registry.manifests import parse_manifest
from ultraplane.registry.platform import Platform, PlatformConfig
from ultraplane.registry.storage import Storage

DAY = 86400.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def rule(priority: int, tag_status: str, count_type: str, number: int, action: str = "expire",
         **selection: Any) -> dict[str, Any]:
    chosen: dict[str, Any] = {"tagStatus": tag_status, "countType": count_type, "countNumber": number, **selection}
    if count_type != "imageCountMoreThan":
        chosen["countUnit"] = "days"
    kind = {"type": "expire"} if action == "expire" else {"type": "transition", "targetStorageClass": "archive"}
    return {"rulePriority": priority, "selection": chosen, "action": kind}


@pytest.mark.parametrize(("policy", "complaint"), [
    ({"rules": []}, "non-empty"),
    ({"rules": [rule(1, "tagged", "imageCountMoreThan", 1)]}, "tagPrefixList or tagPatternList"),
    ({"rules": [rule(1, "sometimes", "imageCountMoreThan", 1)]}, "tagStatus"),
    ({"rules": [rule(1, "any", "imageCountMoreThan", 0)]}, "countNumber"),
    ({"rules": [rule(1, "any", "sinceImagePushed", 3) | {"selection": {"tagStatus": "any", "countNumber": 3,
                                                                      "countType": "sinceImagePushed"}}]},
     "countUnit"),
    ({"rules": [rule(1, "any", "imageCountMoreThan", 1), rule(2, "untagged", "imageCountMoreThan", 1)]},
     "tagStatus any must have the highest"),
    ({"rules": [rule(1, "untagged", "imageCountMoreThan", 1), rule(1, "any", "imageCountMoreThan", 2)]},
     "unique"),
    ({"rules": [rule(1, "any", "imageCountMoreThan", 1) | {"action": {"type": "transition"}}]}, "action"),
])
def test_invalid_policies_are_refused(policy: dict[str, Any], complaint: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_policy(policy)
    assert caught.value.status == 400 and complaint in caught.value.message


def test_evaluation_follows_ecr_rule_order() -> None:
    now = 1_000 * DAY
    images = [ImageInfo(f"sha256:{i:064x}", tags, now - age * DAY, pulled)
              for i, (tags, age, pulled) in enumerate([
                  (["prod-1"], 30, None), (["prod-2"], 20, now - 1 * DAY), (["prod-3"], 10, None),
                  (["dev-1"], 40, None), ([], 50, None), ([], 1, None)])]
    policy = {"rules": [
        rule(1, "tagged", "imageCountMoreThan", 2, "archive", tagPrefixList=["prod"]),
        rule(2, "untagged", "sinceImagePushed", 7),
        rule(3, "any", "sinceImagePulled", 25),
    ]}
    result = evaluate(parse_policy(policy), images, in_use={images[3].digest}, now=now)
    decided = {d.digest: (d.rule, d.action, d.protected) for d in result.decisions}
    assert decided == {
        images[0].digest: (1, "archive", False),  # the oldest prod image beyond the newest two
        images[4].digest: (2, "expire", False),  # untagged and 50 days old; the 1-day-old one stays
        images[3].digest: (3, "expire", True),  # never pulled, pushed 40 days ago; but in use
    }
    # prod-2 was pulled yesterday: rule 3 would not take it even without rule 1 claiming it first.
    alone = evaluate(parse_policy({"rules": [rule(1, "any", "sinceImagePulled", 15)]}), images, set(), now=now)
    assert images[1].digest not in {d.digest for d in alone.decisions}
    assert images[2].digest not in {d.digest for d in alone.decisions}


def backdate(registry: RegistryProcess, name: str, digest: str, days: float) -> None:
    algorithm, encoded = digest.split(":")
    revision = registry.data_dir / "storage" / "repositories" / name / "_manifests" / "revisions" / algorithm / encoded
    stamp = time.time() - days * DAY
    os.utime(revision, (stamp, stamp))


def push_series(client: Client, registry: RegistryProcess, name: str, count: int) -> list[Image]:
    images = []
    for index in range(count):
        image = build_image([{"version": f"{name} {index}".encode()}])
        push_image(client, name, f"v{index}", image)
        backdate(registry, name, image.digest, count - index)  # v0 is the oldest
        images.append(image)
    return images


def wait_for(condition: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_preview_archive_restore_and_in_use(signing_registry: RegistryProcess, signing_admin: Client) -> None:
    name = "signed/lifecycle"
    images = push_series(signing_admin, signing_registry, name, 4)
    base = f"/ultraplane/v1/repositories/{name}/lifecycle"
    policy = {"rules": [rule(1, "tagged", "imageCountMoreThan", 2, "archive", tagPatternList=["v*"])]}
    preview = signing_admin.request("POST", base + "/preview", json=policy)
    assert preview.status_code == 200, preview.text
    listed = preview.json()["previewResults"]
    assert [(r["imageDigest"], r["action"]["type"], r["action"]["targetStorageClass"]) for r in listed] == [
        (images[1].digest, "transition", "archive"), (images[0].digest, "transition", "archive")]
    # Signatures (cosign tags, Notation referrers) are attachments, not images: never counted or listed.
    assert len(listed) == 2

    bad = signing_admin.request("PUT", base, json={"rules": [{"rulePriority": 1}]})
    assert bad.status_code == 400 and "selection" in bad.json()["errors"][0]["message"]
    assert signing_admin.request("PUT", "/ultraplane/v1/inuse", json={"digests": [images[0].digest]}).ok
    stored = signing_admin.request("PUT", base, json=policy)
    assert stored.status_code == 200 and signing_admin.request("GET", base).json()["lifecyclePolicyText"] == policy

    # The background evaluator (every second) archives v1 and leaves v0, which is in use.
    def archived() -> list[dict[str, Any]]:
        return list(signing_admin.request("GET", f"/ultraplane/v1/repositories/{name}/archive").json()["archived"])

    entries = wait_for(lambda: [e for e in archived() if e["digest"] == images[1].digest])
    assert entries[0]["tags"] == ["v1"] and len(entries[0]["referrers"]) == 2  # cosign + Notation signature
    assert {e["digest"] for e in archived()} == {images[1].digest, *entries[0]["referrers"]}
    assert signing_admin.request("DELETE", base).status_code == 202  # no further evaluation of this repository
    for reference in ("v1", images[1].digest):
        pulled = signing_admin.request("GET", f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert pulled.status_code == 404 and error_codes(pulled) == ["MANIFEST_UNKNOWN"]
    assert signing_admin.request("GET", f"/v2/{name}/manifests/v0", headers={"Accept": OCI_MANIFEST}).ok
    referrers = signing_admin.request("GET", f"/v2/{name}/referrers/{images[1].digest}").json()["manifests"]
    assert referrers == []

    restore_path = f"/ultraplane/v1/repositories/{name}/restore/{images[1].digest}"
    assert signing_admin.request("GET", restore_path).json()["status"] == "archived"
    started = signing_admin.request("POST", restore_path)
    assert started.status_code == 202 and started.json()["status"] in ("in progress", "complete")
    done = wait_for(lambda: (s := signing_admin.request("GET", restore_path).json())["status"] == "complete" and s)
    assert set(done["restored"]) == {images[1].digest, *entries[0]["referrers"]}
    pulled = signing_admin.request("GET", f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200 and pulled.content == images[1].manifest
    for digest, data in images[1].blobs().items():
        assert signing_admin.request("GET", f"/v2/{name}/blobs/{digest}").content == data
    verified = signing_admin.request("POST", "/ultraplane/v1/signing/verify",
                                     json={"repository": name, "reference": "v1"}).json()
    assert verified["cosign"]["valid"] and verified["notation"]["valid"]

    audit = signing_admin.request("GET", "/ultraplane/v1/audit", params={"repository": name}).json()["records"]
    archive_records = [r for r in audit if r["action"] == "archive"]
    assert {r["digest"] for r in archive_records} == {images[1].digest, *entries[0]["referrers"]}
    assert all(r["who"] == "lifecycle" for r in archive_records)
    assert {r["digest"] for r in audit if r["action"] == "restore"} == set(done["restored"])
    unknown = signing_admin.request("POST", f"/ultraplane/v1/repositories/{name}/restore/{images[0].digest}")
    assert unknown.status_code == 404 and error_codes(unknown) == ["MANIFEST_UNKNOWN"]


def test_expire_by_pull_age_cascades_to_signatures(signing_registry: RegistryProcess,
                                                    signing_admin: Client) -> None:
    name = "signed/expiry"
    images = push_series(signing_admin, signing_registry, name, 3)
    for image in images:
        backdate(signing_registry, name, image.digest, 10)
    assert signing_admin.request("GET", f"/v2/{name}/manifests/v2", headers={"Accept": OCI_MANIFEST}).ok
    policy = {"rules": [rule(1, "any", "sinceImagePulled", 5)]}
    base = f"/ultraplane/v1/repositories/{name}/lifecycle"
    expired = {r["imageDigest"] for r in signing_admin.request("POST", base + "/preview",
                                                               json=policy).json()["previewResults"]}
    assert expired == {images[0].digest, images[1].digest}  # v2 was just pulled
    signature_tag = "sha256-" + images[0].digest.split(":")[1] + ".sig"
    assert signing_admin.request("GET", f"/v2/{name}/manifests/{signature_tag}",
                                 headers={"Accept": OCI_MANIFEST}).ok
    assert signing_admin.request("PUT", base, json=policy).ok
    applied = signing_admin.request("POST", base + "/run")
    assert applied.status_code == 200
    wait_for(lambda: signing_admin.request("GET", f"/v2/{name}/tags/list").json()["tags"] == [
        "sha256-" + images[2].digest.split(":")[1] + ".sig", "v2"])
    assert signing_admin.request("DELETE", base).status_code == 202
    gone = signing_admin.request("GET", f"/v2/{name}/manifests/{images[0].digest}", headers={"Accept": OCI_MANIFEST})
    assert gone.status_code == 404
    assert signing_admin.request("GET", f"/v2/{name}/referrers/{images[0].digest}").json()["manifests"] == []
    deletes = signing_admin.request("GET", "/ultraplane/v1/audit",
                                    params={"repository": name, "action": "delete"}).json()["records"]
    assert {images[0].digest, images[1].digest} <= {r["digest"] for r in deletes}
    assert any(r["detail"].get("cascadeOf") == images[0].digest for r in deletes)


def test_in_use_set_refuses_manual_archive(signing_registry: RegistryProcess, signing_admin: Client) -> None:
    image = build_image([{"running": b"yes"}])
    push_image(signing_admin, "plain/running", "v1", image)
    assert signing_admin.request("PUT", "/ultraplane/v1/inuse", json={"digests": [image.digest]}).ok
    refused = signing_admin.request("POST", f"/ultraplane/v1/repositories/plain/running/archive/{image.digest}")
    assert refused.status_code == 403 and "in use" in refused.json()["errors"][0]["message"]
    bad = signing_admin.request("PUT", "/ultraplane/v1/inuse", json={"digests": ["sha256:nothex"]})
    assert bad.status_code == 400
    assert signing_admin.request("GET", "/ultraplane/v1/inuse").json()["digests"] == [image.digest]

    # A live inventory may write the in-use file itself; the registry picks the change up.
    other = build_image([{"running": b"no longer"}])
    push_image(signing_admin, "plain/running", "v2", other)
    backdate(signing_registry, "plain/running", other.digest, 2)  # the older one: beyond the count
    (signing_registry.data_dir / "lifecycle" / "inuse.json").write_text(json.dumps({"digests": [other.digest]}))
    os.utime(signing_registry.data_dir / "lifecycle" / "inuse.json", (time.time() + 5, time.time() + 5))
    preview = signing_admin.request("POST", "/ultraplane/v1/repositories/plain/running/lifecycle/preview",
                                    json={"rules": [rule(1, "any", "imageCountMoreThan", 1)]}).json()
    assert [(r["imageDigest"], r["inUse"]) for r in preview["previewResults"]] == [(other.digest, True)]


async def test_archived_blobs_survive_garbage_collection_and_restore_byte_for_byte(tmp_path: Path) -> None:
    """In-process: the archive really holds the content, so after GC took the serving copies a restore still
    brings back every blob (digest-verified), while blobs shared with a live image never left."""
    storage = Storage(tmp_path / "storage")
    platform = Platform(tmp_path, storage, PlatformConfig(lifecycle_interval=0))
    shared_layer = b"shared base layer"
    archived = build_image([{"own": b"only in the archived image"}])
    live = build_image([{"own": b"only in the live image"}])
    for image, extra in ((archived, shared_layer), (live, shared_layer)):
        for data in [*image.blobs().values(), extra]:
            storage.put_blob(sha256(data), data)
            storage.link_blob("arch/app", sha256(data))
        document = json.loads(image.manifest)
        document["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": sha256(extra), "size": len(extra)})
        image.manifest = json.dumps(document).encode()
        parsed = parse_manifest(OCI_MANIFEST, image.manifest)
        storage.put_manifest("arch/app", image.digest, parsed.media_type, image.manifest, tag="v1" if image is
                             archived else "v2", references=parsed.blobs, subject=None,
                             descriptor=parsed.descriptor(image.digest, len(image.manifest)))
    try:
        assert await platform.archive.archive("arch/app", archived.digest) == [archived.digest]
        report = await storage.collect_garbage(0)
        own_layer = sha256(archived.layers[0])
        assert report.deleted_blobs >= 2 and not storage.blob_path(own_layer).exists()
        assert storage.blob_path(sha256(shared_layer)).exists()  # still referenced by the live image
        assert storage.resolve_tag("arch/app", "v1") is None
        assert await platform.archive.restore("arch/app", archived.digest) == [archived.digest]
        assert platform.archive.restore_status("arch/app", archived.digest)["status"] == "complete"
        assert storage.resolve_tag("arch/app", "v1") == archived.digest
        assert storage.read_manifest(archived.digest) == archived.manifest
        for data in [*archived.blobs().values(), shared_layer]:
            assert storage.repo_blob_size("arch/app", sha256(data)) == len(data)
            assert storage.blob_path(sha256(data)).read_bytes() == data
    finally:
        await platform.close()
