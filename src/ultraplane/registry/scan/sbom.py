"""SBOM from image layers: package databases found in the union filesystem the layers stack into.

Only the files that describe packages are kept (dpkg status and status.d, apk's installed db, Python
dist-info/egg-info metadata, npm package.json under node_modules, os-release). Layers apply in order; a
layer's whiteouts (`.wh.<name>` hides a path and everything below it, `.wh..wh..opq` hides everything in
lower layers under its directory) apply to the lower layers before the layer's own files land, as the OCI
image spec's changeset rules say. After every layer the set of packages is compared with the one before, so
each package records the layer that introduced it and the history records what each layer added or removed.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from typing import Any, BinaryIO

from packaging.utils import canonicalize_name

from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.layout import Image

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d/"
APK_INSTALLED = "lib/apk/db/installed"


@dataclass(frozen=True)
class Package:
    kind: str  # deb, apk, pypi, npm: the purl type
    name: str
    version: str
    location: str  # the database file that lists it
    source: str = ""  # dpkg Source / apk origin: the name OSV's distro advisories use
    arch: str = ""
    license: str = ""
    layer: str = ""  # digest of the layer that introduced it

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.kind, self.name, self.version, self.location


@dataclass
class LayerChange:
    digest: str
    added: list[Package] = field(default_factory=list)
    removed: list[Package] = field(default_factory=list)


@dataclass
class Sbom:
    image_digest: str
    image_name: str
    distro: str  # OSV ecosystem of the OS packages: "Debian:12", "Alpine:v3.19", or ""
    packages: list[Package]
    history: list[LayerChange]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sbom:
        history = [
            LayerChange(h["digest"], [Package(**p) for p in h["added"]], [Package(**p) for p in h["removed"]])
            for h in data.get("history") or []
        ]
        return cls(
            data["image_digest"],
            data.get("image_name", ""),
            data.get("distro", ""),
            [Package(**p) for p in data["packages"]],
            history,
        )

    def ecosystem(self, package: Package) -> str:
        """The OSV ecosystem a package's advisories are filed under."""
        if package.kind in ("deb", "apk"):
            return self.distro or ("Debian" if package.kind == "deb" else "Alpine")
        return {"pypi": "PyPI", "npm": "npm"}[package.kind]


# ------------------------------------------------------------------------------------------- parsers


def _stanzas(text: str) -> list[dict[str, str]]:
    """RFC 822-style paragraphs (dpkg status): `Field: value`, continuation lines start with a space."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip()
            current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_dpkg_status(text: str, location: str) -> list[Package]:
    packages = []
    for stanza in _stanzas(text):
        name, version = stanza.get("Package"), stanza.get("Version")
        if not name or not version:
            continue
        status = stanza.get("Status")
        if status is not None and status.split()[-1:] != ["installed"]:
            continue  # removed, config-files only, half-installed
        source = stanza.get("Source", "").split(" ")[0]
        packages.append(
            Package(
                "deb", name, version, location, source=source or name, arch=stanza.get("Architecture", "")
            )
        )
    return packages


def parse_apk_installed(text: str, location: str) -> list[Package]:
    packages = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":":
                fields.setdefault(line[0], line[2:])
        if fields.get("P") and fields.get("V"):
            packages.append(
                Package(
                    "apk",
                    fields["P"],
                    fields["V"],
                    location,
                    source=fields.get("o", fields["P"]),
                    arch=fields.get("A", ""),
                    license=fields.get("L", ""),
                )
            )
    return packages


def parse_python_metadata(text: str, location: str) -> list[Package]:
    headers = HeaderParser().parsestr(text, headersonly=True)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        return []
    license_text = headers.get("License-Expression") or headers.get("License") or ""
    if "\n" in license_text or len(license_text) > 100:
        license_text = ""  # the whole licence text, not a name
    return [Package("pypi", str(canonicalize_name(name)), version.strip(), location, license=license_text)]


def parse_package_json(text: str, location: str) -> list[Package]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("name"), str)
        or not isinstance(data.get("version"), str)
    ):
        return []
    license_value = data.get("license")
    return [
        Package(
            "npm",
            data["name"],
            data["version"],
            location,
            license=license_value if isinstance(license_value, str) else "",
        )
    ]


def _is_node_module_manifest(parts: list[str]) -> bool:
    if len(parts) >= 3 and parts[-3] == "node_modules" and not parts[-2].startswith("@"):
        return True
    return len(parts) >= 4 and parts[-4] == "node_modules" and parts[-3].startswith("@")


def package_file_kind(path: str) -> str | None:
    """Which parser reads the file at this (normalised, relative) path, if any."""
    if path == DPKG_STATUS:
        return "dpkg"
    if (
        path.startswith(DPKG_STATUS_D)
        and "/" not in path[len(DPKG_STATUS_D) :]
        and not path.endswith(".md5sums")
    ):
        return "dpkg"
    if path == APK_INSTALLED:
        return "apk"
    if path in OS_RELEASE:
        return "os-release"
    parts = path.split("/")
    if len(parts) >= 2 and (
        (parts[-2].endswith(".dist-info") and parts[-1] == "METADATA")
        or (parts[-2].endswith(".egg-info") and parts[-1] == "PKG-INFO")
    ):
        return "python"
    if parts[-1] == "package.json" and _is_node_module_manifest(parts):
        return "npm"
    return None


_PARSERS = {
    "dpkg": parse_dpkg_status,
    "apk": parse_apk_installed,
    "python": parse_python_metadata,
    "npm": parse_package_json,
}


def distro_ecosystem(os_release: str) -> str:
    fields = {}
    for line in os_release.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name.strip()] = value.strip().strip('"').strip("'")
    distro, version = fields.get("ID", ""), fields.get("VERSION_ID", "")
    if distro == "debian":
        return f"Debian:{version.split('.')[0]}" if version else "Debian"
    if distro == "ubuntu":
        return f"Ubuntu:{version}" if version else "Ubuntu"
    if distro == "alpine":
        return f"Alpine:v{'.'.join(version.split('.')[:2])}" if version else "Alpine"
    return ""


# ----------------------------------------------------------------------------------------- layers


def _normalise(name: str) -> str:
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


def _under(path: str, directory: str) -> bool:
    return not directory or path == directory or path.startswith(directory + "/")


def read_layer(stream: BinaryIO, digest: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(whited-out paths, opaque directories, package files {path: text}) of one uncompressed layer tar,
    read as a stream: only package files are held in memory."""
    whiteouts: list[str] = []
    opaque: list[str] = []
    files: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                path = _normalise(member.name)
                directory, base = posixpath.split(path)
                if base == OPAQUE:
                    opaque.append(directory)
                    continue
                if base.startswith(WHITEOUT):
                    whiteouts.append(posixpath.join(directory, base[len(WHITEOUT) :]))
                    continue
                if not member.isfile():
                    if member.isdir() or member.issym() or member.islnk():
                        files.pop(path, None)  # a later entry replaces an earlier one of the same path
                    continue
                kind = package_file_kind(path)
                if kind is None:
                    continue
                handle = archive.extractfile(member)
                raw = handle.read() if handle is not None else b""
                files[path] = raw.decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ScanError(f"layer {digest}: corrupt tar archive: {exc}") from None
    return whiteouts, opaque, files


def build_sbom(image: Image) -> Sbom:
    """Read every layer of the image (verifying digests) and return its SBOM; raises ScanError on bad input
    without side effects."""
    live: dict[str, str] = {}  # path -> text, the package files visible after the layers so far
    present: dict[tuple[str, str, str, str], Package] = {}
    history: list[LayerChange] = []
    for index, ref in enumerate(image.layers):
        with image.open_layer(index) as stream:
            whiteouts, opaque, files = read_layer(stream, ref.digest)
        for directory in opaque:
            for path in [p for p in live if _under(p, directory) and p != directory]:
                del live[path]
        for hidden in whiteouts:
            for path in [p for p in live if _under(p, hidden)]:
                del live[path]
        live.update(files)
        current: dict[tuple[str, str, str, str], Package] = {}
        for path, text in live.items():
            kind = package_file_kind(path)
            parser = _PARSERS.get(kind or "")
            if parser is None:
                continue
            for package in parser(text, path):
                earlier = present.get(package.key)
                current[package.key] = earlier if earlier is not None else _with_layer(package, ref.digest)
        change = LayerChange(
            ref.digest,
            [p for k, p in current.items() if k not in present],
            [p for k, p in present.items() if k not in current],
        )
        history.append(change)
        present = current
    distro = ""
    for path in OS_RELEASE:
        if path in live:
            distro = distro_ecosystem(live[path])
            break
    packages = sorted(present.values(), key=lambda p: (p.kind, p.name, p.version, p.location))
    return Sbom(image.digest, image.name, distro, packages, history)


def _with_layer(package: Package, layer: str) -> Package:
    return Package(
        package.kind,
        package.name,
        package.version,
        package.location,
        package.source,
        package.arch,
        package.license,
        layer,
    )
