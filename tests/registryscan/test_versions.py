"""Version ordering per ecosystem: tables of known orderings from each ecosystem's documentation."""

from __future__ import annotations

import itertools

import pytest

from ultraplane.registry.scan import versions
from ultraplane.registry.scan.errors import ScanError

# each list is strictly ascending; every pair is checked both ways
DPKG_ASCENDING = [
    # deb-version(7): `~` sorts before everything, even the end of the part
    ["1.0~~", "1.0~~a", "1.0~", "1.0", "1.0a", "1.0+", "1.0.1"],
    # Debian policy: letters before non-letters; digits numerically
    ["1.2", "1.2a", "1.2+dfsg", "1.2.3", "1.10"],
    # epochs dominate everything else
    ["9.9-9", "1:0.1", "1:1.0", "2:0.0.1"],
    # revisions compare with the same rules
    ["1.0-1~bpo1", "1.0-1", "1.0-1+deb12u1", "1.0-2", "1.0-10"],
    ["3.0.11-1~deb12u1", "3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "3.0.13-1"],
    ["2.36-9+deb12u3", "2.36-9+deb12u4", "2.36-9+deb12u10"],
    ["1.0~rc1-1", "1.0-1"],
]
DPKG_EQUAL = [("1.0", "0:1.0"), ("1.0", "1.0-0"), ("1.01", "1.1"), ("1.0-1", "1.0-01")]

APK_ASCENDING = [
    # pre-release suffixes before the release, post-release after (apk-package(5) / Alpine wiki)
    [
        "1.0_alpha",
        "1.0_alpha2",
        "1.0_beta",
        "1.0_pre",
        "1.0_rc1",
        "1.0_rc2",
        "1.0",
        "1.0_cvs",
        "1.0_svn",
        "1.0_git",
        "1.0_hg",
        "1.0_p1",
        "1.0_p2",
    ],
    ["1.0", "1.0-r1", "1.0-r2", "1.0-r10", "1.0a", "1.0b", "1.0.1", "1.1", "1.2", "1.10", "2.0"],
    ["3.1.4-r5", "3.1.4-r6", "3.1.4_p1-r0", "3.1.5-r0"],
    ["1.2.3_rc1-r0", "1.2.3-r0", "1.2.3.1-r0"],
    # a later part with a leading zero compares as a decimal fraction
    ["1.001", "1.01", "1.1"],
    ["0.9.9", "1.0_rc1", "1.0"],
]
APK_EQUAL = [("1.0-r0", "1.0-r0"), ("2.10.1", "2.10.1")]

PEP440_ASCENDING = [
    # PEP 440's summary ordering
    [
        "1.0.dev456",
        "1.0a1",
        "1.0a2.dev456",
        "1.0a12.dev456",
        "1.0a12",
        "1.0b1.dev456",
        "1.0b2",
        "1.0b2.post345.dev456",
        "1.0b2.post345",
        "1.0rc1.dev456",
        "1.0rc1",
        "1.0",
        "1.0+abc.5",
        "1.0+abc.7",
        "1.0+5",
        "1.0.post456.dev34",
        "1.0.post456",
        "1.0.15",
        "1.1.dev1",
    ],
    ["1!0.1", "1!1.0"],
    ["2.30.0", "2.31.0", "2.32.0", "10.0"],
]
PEP440_EQUAL = [("1.0", "1.0.0"), ("1.0RC1", "1.0rc1"), ("v1.0", "1.0"), ("1.0-post1", "1.0.post1")]

SEMVER_ASCENDING = [
    # semver.org §11
    [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ],
    ["1.0.0", "2.0.0", "2.1.0", "2.1.1", "2.10.0"],
    ["4.17.20", "4.17.21"],
]
SEMVER_EQUAL = [("1.0.0+build.1", "1.0.0+build.2"), ("1.0.0", "v1.0.0")]

CASES = [
    ("Debian:12", DPKG_ASCENDING, DPKG_EQUAL),
    ("Alpine:v3.19", APK_ASCENDING, APK_EQUAL),
    ("PyPI", PEP440_ASCENDING, PEP440_EQUAL),
    ("npm", SEMVER_ASCENDING, SEMVER_EQUAL),
]


@pytest.mark.parametrize(("ecosystem", "ascending", "equal"), CASES, ids=[c[0] for c in CASES])
def test_known_orderings(ecosystem: str, ascending: list[list[str]], equal: list[tuple[str, str]]) -> None:
    for chain in ascending:
        for low, high in itertools.combinations(chain, 2):
            assert versions.compare(ecosystem, low, high) < 0, (ecosystem, low, high)
            assert versions.compare(ecosystem, high, low) > 0, (ecosystem, high, low)
        shuffled = list(reversed(chain))
        assert sorted(shuffled, key=versions.sort_key(ecosystem)) == chain
    for a, b in equal:
        assert versions.compare(ecosystem, a, b) == 0, (ecosystem, a, b)
        assert versions.compare(ecosystem, b, a) == 0, (ecosystem, b, a)


@pytest.mark.parametrize(
    ("ecosystem", "bad", "message"),
    [
        ("Debian", "a:1.0", "epoch in version is not number"),
        ("Debian", "abc", "version number does not start with digit"),
        ("Debian", "1.0 beta", "invalid character in version number"),
        ("Alpine", "1.0-beta", "apk version"),
        ("Alpine", "v1.0", "apk version"),
        ("PyPI", "1.0-banana-split", "PEP 440 version"),
        ("npm", "1.0", "semver version"),
    ],
)
def test_invalid_versions_raise(ecosystem: str, bad: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        versions.compare(ecosystem, bad, bad)


def test_unknown_ecosystem() -> None:
    with pytest.raises(ScanError, match="unknown ecosystem 'Go'"):
        versions.compare("Go", "1.0.0", "1.0.1")
