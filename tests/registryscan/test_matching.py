"""OSV advisories (fixtures in osv/) matched against real small images; range semantics; zip exports;
rescans when advisories change; bad advisory files."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.registryscan.images import ALPINE_OS_RELEASE, apk_db, debian_app_layers, write_layout
from ultraplane.registry.scan import advisories as osv
from ultraplane.registry.scan.advisories import Event, Range
from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.layout import open_layout
from ultraplane.registry.scan.matcher import evaluate_range
from ultraplane.registry.scan.store import SbomStore, Scanner
from ultraplane.registry.scan.versions import compare_dpkg, compare_semver

FIXTURES = Path(__file__).parent / "osv"


def alpine_layers() -> list[dict[str, bytes | None]]:
    return [
        {
            "etc/os-release": ALPINE_OS_RELEASE,
            "lib/apk/db/installed": apk_db(
                ("busybox", "1.36.1-r15", "busybox"),
                ("ssl_client", "1.36.1-r15", "busybox"),
                ("musl", "1.2.4_git20230717-r4", "musl"),
                ("zlib", "1.3.1-r0", "zlib"),
            ),
        }
    ]


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    layers = debian_app_layers()
    write_layout(tmp_path / "debian", layers)
    write_layout(tmp_path / "debian-base", layers[:1])
    write_layout(tmp_path / "alpine", alpine_layers())
    return {name: tmp_path / name for name in ("debian", "debian-base", "alpine")}


def summary(findings: list) -> set[tuple[str, str, str, str]]:
    return {(f.package, f.installed_version, f.advisory_id, f.fixed_version) for f in findings}


def test_findings_per_image(images: dict[str, Path]) -> None:
    scanner = Scanner(advisories=osv.load(FIXTURES))
    debian = scanner.scan(open_layout(images["debian"]))
    assert summary(debian) == {
        (
            "zlib1g",
            "1:1.2.13.dfsg-1",
            "DEBIAN-CVE-2023-45853",
            "1:1.3.dfsg-3",
        ),  # by source name, epoch honoured
        ("requests", "2.30.0", "PYSEC-2023-74", "2.31.0"),  # "Requests" normalised
        ("jinja2", "3.1.2", "GHSA-h5c8-rqwp-cp95", ""),  # last_affected == installed
        ("lodash", "4.17.20", "GHSA-35jh-r3h4-6jhm", "4.17.21"),
        ("@babel/traverse", "7.23.0", "GHSA-67hx-6x53-jw92", "7.23.2"),
    }  # not openssl (upgraded to the fix), not Debian:11's tzdata, not pyyaml/left-pad (whited out)
    by_id = {f.advisory_id: f for f in debian}
    zlib = by_id["DEBIAN-CVE-2023-45853"]
    assert (zlib.severity, zlib.score, zlib.aliases, zlib.ecosystem) == (
        "CRITICAL",
        9.8,
        ("CVE-2023-45853",),
        "Debian:12",
    )
    assert (by_id["PYSEC-2023-74"].severity, by_id["PYSEC-2023-74"].score) == ("MEDIUM", 6.1)  # NVD's scores
    assert (by_id["GHSA-35jh-r3h4-6jhm"].severity, by_id["GHSA-35jh-r3h4-6jhm"].score) == ("HIGH", 7.2)
    assert (by_id["GHSA-h5c8-rqwp-cp95"].severity, by_id["GHSA-h5c8-rqwp-cp95"].score) == ("MODERATE", None)
    assert "CVE-2023-32681" in by_id["PYSEC-2023-74"].aliases
    assert debian[0].severity == "CRITICAL"  # most severe first

    base = scanner.scan(open_layout(images["debian-base"]))
    assert summary(base) == {
        ("openssl", "3.0.11-1~deb12u1", "DSA-5585-1", "3.0.13-1~deb12u1"),
        ("libssl3", "3.0.11-1~deb12u1", "DSA-5585-1", "3.0.13-1~deb12u1"),  # binary of source openssl
        ("zlib1g", "1:1.2.13.dfsg-1", "DEBIAN-CVE-2023-45853", "1:1.3.dfsg-3"),
    }
    assert {f.score for f in base if f.advisory_id == "DSA-5585-1"} == {5.3}

    alpine = scanner.scan(open_layout(images["alpine"]))
    assert summary(alpine) == {
        ("busybox", "1.36.1-r15", "ALPINE-CVE-2023-42366", "1.36.1-r16"),
        ("ssl_client", "1.36.1-r15", "ALPINE-CVE-2023-42366", "1.36.1-r16"),  # origin busybox
        ("musl", "1.2.4_git20230717-r4", "ALPINE-TEST-MUSL", "1.2.4_git20230717-r5"),
    }  # not v3.18's advisory; not zlib (fixed in 1.3.1_rc1, before the installed 1.3.1)
    musl = next(f for f in alpine if f.package == "musl")
    assert (musl.severity, musl.score) == ("CRITICAL", 9.3)  # CVSS v4 base score

    assert set(scanner.digests_with("CVE-2023-45853")) == {
        open_layout(images["debian"]).digest,
        open_layout(images["debian-base"]).digest,
    }


@pytest.mark.parametrize(
    ("events", "table"),
    [
        # introduced/fixed pairs, two ranges in one event list
        (
            [("introduced", "0"), ("fixed", "1.0.0"), ("introduced", "2.0.0"), ("fixed", "2.1.0")],
            {
                "0.9.0": (True, "1.0.0"),
                "1.0.0": (False, ""),
                "1.5.0": (False, ""),
                "2.0.0": (True, "2.1.0"),
                "2.0.9": (True, "2.1.0"),
                "2.1.0": (False, ""),
                "3.0.0": (False, ""),
            },
        ),
        # last_affected includes the bound
        (
            [("introduced", "1.0.0"), ("last_affected", "1.4.0")],
            {"0.1.0": (False, ""), "1.0.0": (True, ""), "1.4.0": (True, ""), "1.4.1": (False, "")},
        ),
        # open-ended
        ([("introduced", "1.2.0")], {"1.1.9": (False, ""), "1.2.0": (True, ""), "9.0.0": (True, "")}),
        # limit caps the range
        (
            [("introduced", "0"), ("limit", "2.0.0")],
            {"1.0.0": (True, ""), "2.0.0": (False, ""), "2.5.0": (False, "")},
        ),
        # pre-releases sort before their release
        (
            [("introduced", "2.0.0-alpha.1"), ("fixed", "2.0.0-rc.2")],
            {"2.0.0-alpha.0": (False, ""), "2.0.0-beta": (True, "2.0.0-rc.2"), "2.0.0": (False, "")},
        ),
    ],
)
def test_semver_range_evaluation(events: list[tuple[str, str]], table: dict[str, tuple[bool, str]]) -> None:
    range_ = Range("SEMVER", tuple(Event(k, v) for k, v in events))
    for version, expected in table.items():
        assert evaluate_range(version, range_, compare_semver) == expected, version


def test_dpkg_range_with_tilde_and_epoch() -> None:
    range_ = Range("ECOSYSTEM", (Event("introduced", "0"), Event("fixed", "2.36-9+deb12u4")))
    assert evaluate_range("2.36-9+deb12u3", range_, compare_dpkg) == (True, "2.36-9+deb12u4")
    assert evaluate_range("2.36-9+deb12u10", range_, compare_dpkg) == (False, "")
    assert evaluate_range("2.36-9~bpo1", range_, compare_dpkg) == (True, "2.36-9+deb12u4")
    assert evaluate_range("1:2.0-1", range_, compare_dpkg) == (False, "")


def test_zip_export_loads_the_same(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in FIXTURES.glob("*.json"):
            out.write(path, path.name)
    from_zip = {a.id: a for a in osv.load(archive)}
    from_dir = {a.id: a for a in osv.load(FIXTURES)}
    assert from_zip.keys() == from_dir.keys() and len(from_zip) == 14
    assert all(from_zip[k].affected == from_dir[k].affected for k in from_zip)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ScanError, match="not a readable zip archive"):
        osv.load(tmp_path / "broken.zip")


def test_rescan_when_advisories_change(images: dict[str, Path], tmp_path: Path) -> None:
    store_dir = tmp_path / "sboms"
    scanner = Scanner(SbomStore(store_dir), osv.load(FIXTURES))
    debian = open_layout(images["debian"])
    alpine = open_layout(images["alpine"])
    scanner.scan(debian)
    scanner.scan(alpine)
    assert scanner.sbom_builds == 2

    changed = tmp_path / "osv2"
    shutil.copytree(FIXTURES, changed)
    (changed / "PYSEC-2023-74.json").unlink()  # withdrawn
    (changed / "DEBIAN-CVE-2099-0100.json").write_text(
        json.dumps(
            {
                "id": "DEBIAN-CVE-2099-0100",
                "modified": "2024-02-01T00:00:00Z",
                "aliases": ["CVE-2099-0100"],
                "affected": [
                    {
                        "package": {"ecosystem": "Debian:12", "name": "tzdata"},
                        "ranges": [
                            {
                                "type": "ECOSYSTEM",
                                "events": [{"introduced": "0"}, {"fixed": "2024b-0+deb12u1"}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    changes = scanner.update_advisories(osv.load(changed))
    assert scanner.sbom_builds == 2  # no layer read again
    assert set(changes) == {debian.digest}  # the alpine image's findings did not change
    assert summary(changes[debian.digest].added) == {
        ("tzdata", "2024a-0+deb12u1", "DEBIAN-CVE-2099-0100", "2024b-0+deb12u1")
    }
    assert summary(changes[debian.digest].removed) == {("requests", "2.30.0", "PYSEC-2023-74", "2.31.0")}
    assert scanner.update_advisories(osv.load(changed)) == {}  # same set again: nothing changes

    # a new process reloads the stored SBOMs and matches without the images
    reloaded = Scanner(SbomStore(store_dir), osv.load(changed))
    assert {d: summary(f) for d, f in reloaded.findings.items()} == {
        d: summary(f) for d, f in scanner.findings.items()
    }
    assert reloaded.sbom_builds == 0


GOOD = {
    "id": "X-1",
    "affected": [
        {
            "package": {"ecosystem": "npm", "name": "a"},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}],
        }
    ],
}


def _with(**changes: object) -> dict:
    advisory = json.loads(json.dumps(GOOD))
    affected = advisory["affected"][0]
    for key, value in changes.items():
        if key == "severity":
            advisory["severity"] = value
        elif key == "ecosystem":
            affected["package"]["ecosystem"] = value
        else:
            affected["ranges"][0][key] = value
    return advisory


@pytest.mark.parametrize(
    ("advisory", "message"),
    [
        (_with(ecosystem="Go"), "unknown ecosystem 'Go'"),
        (_with(events=[{"fixed": "1.0.0"}]), "range has no introduced event"),
        (_with(events=[{"introduced": "0", "fixed": "1.0.0"}]), "must have exactly one of"),
        (_with(events=[{"introduced": "0"}, {"patched": "1.0.0"}]), "unknown event 'patched'"),
        (_with(events=[{"introduced": "0"}, {"fixed": "one"}]), "fixed semver version 'one'"),
        (_with(events=[]), "range has no events"),
        (_with(type="RANGE"), "range type 'RANGE' is not ECOSYSTEM, SEMVER or GIT"),
        (
            _with(events=[{"introduced": "0"}, {"fixed": "1.0.0"}, {"last_affected": "0.9.0"}]),
            "mixes fixed and last_affected",
        ),
        (_with(severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:X/AC:L"}]), "invalid CVSS_V3 vector"),
        ({"summary": "no id"}, "advisory has no id"),
    ],
)
def test_bad_advisories_load_nothing(
    tmp_path: Path, images: dict[str, Path], advisory: dict, message: str
) -> None:
    advisories_dir = tmp_path / "osv-bad"
    shutil.copytree(FIXTURES, advisories_dir)
    (advisories_dir / "zz-bad.json").write_text(json.dumps(advisory))
    scanner = Scanner(advisories=osv.load(FIXTURES))
    before = summary(scanner.scan(open_layout(images["debian"])))
    with pytest.raises(ScanError, match=message) as raised:
        scanner.update_advisories(osv.load(advisories_dir))
    assert "zz-bad.json" in str(raised.value)
    assert summary(next(iter(scanner.findings.values()))) == before  # the old set is still in force


def test_dpkg_advisory_with_bad_version(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "id": "D-1",
                "affected": [
                    {
                        "package": {"ecosystem": "Debian:12", "name": "x"},
                        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "a:1"}]}],
                    }
                ],
            }
        )
    )
    with pytest.raises(ScanError, match="epoch in version is not number"):
        osv.load(tmp_path)
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ScanError, match="invalid JSON"):
        osv.load(tmp_path)
