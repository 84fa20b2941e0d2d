"""Version ordering for each package ecosystem the scanner knows.

- dpkg: deb-version(7) / Debian policy 5.6.12: [epoch:]upstream[-revision], compared part by part; within a
  part, alternating runs of non-digits (letters sort before non-letters, `~` before everything, even the end)
  and digits (numerically).
- apk: Alpine's digit{.digit}...{letter}{_suffix{#}}...{-r#}; pre-release suffixes (_alpha, _beta, _pre, _rc)
  sort before the bare version, post-release ones (_cvs, _svn, _git, _hg, _p) after it.
- PyPI: PEP 440 via `packaging.version`.
- npm: semver 2.0 precedence (build metadata ignored) via the `semver` package.

`compare(ecosystem, a, b)` returns <0, 0 or >0; an unparsable version raises VersionError.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import semver
from packaging.version import InvalidVersion, Version

from ultraplane.registry.scan.errors import ScanError


class VersionError(ScanError):
    pass


# ---------------------------------------------------------------------------------------------- dpkg

_DPKG_EPOCH = re.compile(r"^[0-9]+$")
_DPKG_CHARS = re.compile(r"^[A-Za-z0-9.+~:-]*$")


def _dpkg_order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _dpkg_part_compare(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        # non-digit run, character by character; the end of a string weighs 0 (so only `~` sorts before it)
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _dpkg_order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _dpkg_order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            if i < len(a) and not a[i].isdigit():
                i += 1
            if j < len(b) and not b[j].isdigit():
                j += 1
        start_i = i
        while i < len(a) and a[i].isdigit():
            i += 1
        start_j = j
        while j < len(b) and b[j].isdigit():
            j += 1
        an = int(a[start_i:i] or "0")
        bn = int(b[start_j:j] or "0")
        if an != bn:
            return -1 if an < bn else 1
    return 0


@functools.lru_cache(maxsize=65536)
def parse_dpkg(version: str) -> tuple[int, str, str]:
    text = version.strip()
    if not text:
        raise VersionError("dpkg version: empty string")
    epoch = 0
    if ":" in text:
        epoch_text, text = text.split(":", 1)
        if not _DPKG_EPOCH.match(epoch_text):
            raise VersionError(f"dpkg version {version!r}: epoch in version is not number")
        epoch = int(epoch_text)
    upstream, revision = text.rsplit("-", 1) if "-" in text else (text, "")
    if not upstream:
        raise VersionError(f"dpkg version {version!r}: nothing after colon in version number")
    if not upstream[0].isdigit():
        raise VersionError(f"dpkg version {version!r}: version number does not start with digit")
    if not _DPKG_CHARS.match(upstream) or not _DPKG_CHARS.match(revision):
        raise VersionError(f"dpkg version {version!r}: invalid character in version number")
    return epoch, upstream, revision


def compare_dpkg(a: str, b: str) -> int:
    ea, ua, ra = parse_dpkg(a)
    eb, ub, rb = parse_dpkg(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _dpkg_part_compare(ua, ub) or _dpkg_part_compare(ra, rb)


# ----------------------------------------------------------------------------------------------- apk

# token kinds, in the order that decides between two versions that agree up to where one has a different
# kind of part: the one whose next part comes LATER here is the smaller (1.0a < 1.0.1, 1.0 < 1.0.1)
_DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _REVISION, _END = range(6)
_PRE_SUFFIXES = ("alpha", "beta", "pre", "rc")
_POST_SUFFIXES = ("cvs", "svn", "git", "hg", "p")
_APK_VERSION = re.compile(
    r"^(?P<digits>[0-9]+(?:\.[0-9]+)*)(?P<letter>[a-z])?"
    r"(?P<suffixes>(?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*)"
    r"(?:~[0-9a-f]+)?(?:-r(?P<revision>[0-9]+))?$"
)
_APK_SUFFIX = re.compile(r"_([a-z]+)([0-9]*)")
ApkToken = tuple[int, object]


@functools.lru_cache(maxsize=65536)
def parse_apk(version: str) -> tuple[ApkToken, ...]:
    match = _APK_VERSION.match(version)
    if match is None:
        raise VersionError(
            f"apk version {version!r}: not digit{{.digit}}...{{letter}}{{_suf{{#}}}}...{{-r#}}"
        )
    tokens: list[ApkToken] = []
    for index, digits in enumerate(match["digits"].split(".")):
        tokens.append((_DIGIT, (index, digits)))
    if match["letter"]:
        tokens.append((_LETTER, ord(match["letter"])))
    for name, number in _APK_SUFFIX.findall(match["suffixes"] or ""):
        if name in _PRE_SUFFIXES:
            value = _PRE_SUFFIXES.index(name) - len(_PRE_SUFFIXES)
        else:
            value = _POST_SUFFIXES.index(name) + 1
        tokens.append((_SUFFIX, value))
        if number:
            tokens.append((_SUFFIX_NO, int(number)))
    if match["revision"] is not None:
        tokens.append((_REVISION, int(match["revision"])))
    tokens.append((_END, 0))
    return tuple(tokens)


def _apk_value_compare(kind: int, a: object, b: object) -> int:
    if kind == _DIGIT:
        (index_a, text_a), (_, text_b) = a, b  # type: ignore[misc]
        # the first number is numeric; later ones with a leading zero compare as decimal fractions (strings)
        if index_a > 0 and (text_a.startswith("0") or text_b.startswith("0")):
            return (text_a > text_b) - (text_a < text_b)
        return (int(text_a) > int(text_b)) - (int(text_a) < int(text_b))
    return (a > b) - (a < b)  # type: ignore[operator]


def compare_apk(a: str, b: str) -> int:
    ta, tb = parse_apk(a), parse_apk(b)
    for (kind_a, value_a), (kind_b, value_b) in zip(ta, tb, strict=False):
        if kind_a == kind_b:
            if kind_a == _END:
                return 0
            result = _apk_value_compare(kind_a, value_a, value_b)
            if result:
                return result
            continue
        # same so far; a pre-release suffix makes its side smaller, otherwise the side with more parts wins
        if kind_a == _SUFFIX and value_a < 0:  # type: ignore[operator]
            return -1
        if kind_b == _SUFFIX and value_b < 0:  # type: ignore[operator]
            return 1
        return -1 if kind_a > kind_b else 1
    return 0


# ---------------------------------------------------------------------------------------- PyPI, npm


@functools.lru_cache(maxsize=65536)
def parse_pep440(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion as exc:
        raise VersionError(f"PEP 440 version {version!r}: {exc}") from None


def compare_pep440(a: str, b: str) -> int:
    va, vb = parse_pep440(a), parse_pep440(b)
    return (va > vb) - (va < vb)


@functools.lru_cache(maxsize=65536)
def parse_semver(version: str) -> semver.Version:
    try:
        return semver.Version.parse(version.removeprefix("v"))
    except ValueError as exc:
        raise VersionError(f"semver version {version!r}: {exc}") from None


def compare_semver(a: str, b: str) -> int:
    return parse_semver(a).compare(parse_semver(b))  # precedence: build metadata is ignored


_COMPARATORS: dict[str, Callable[[str, str], int]] = {
    "Debian": compare_dpkg,
    "Ubuntu": compare_dpkg,
    "Alpine": compare_apk,
    "PyPI": compare_pep440,
    "npm": compare_semver,
}


def base_ecosystem(ecosystem: str) -> str:
    """`Debian:12` -> `Debian`, `Alpine:v3.19` -> `Alpine`."""
    return ecosystem.split(":", 1)[0]


def comparator(ecosystem: str) -> Callable[[str, str], int]:
    try:
        return _COMPARATORS[base_ecosystem(ecosystem)]
    except KeyError:
        raise VersionError(f"unknown ecosystem {ecosystem!r} (known: {', '.join(_COMPARATORS)})") from None


def compare(ecosystem: str, a: str, b: str) -> int:
    return comparator(ecosystem)(a, b)


def sort_key(ecosystem: str) -> Callable[[str], object]:
    return functools.cmp_to_key(comparator(ecosystem))


def known_ecosystem(ecosystem: str) -> bool:
    return base_ecosystem(ecosystem) in _COMPARATORS
