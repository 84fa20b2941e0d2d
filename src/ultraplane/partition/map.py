"""The partition map: which key prefixes each partition (one store process) owns.

A map names partitions; every partition but one owns one or more key prefixes, and exactly one,
the default partition, owns every key no prefix matches. Prefixes may not overlap (no prefix
may start another, no prefix twice), so every key has exactly one owner.

File format (TOML, or the same shape in JSON)::

    [partitions.default]
    default = true

    [partitions.events]
    prefixes = ["/registry/events/"]
    resources = ["/events"]          # kube-apiserver group/resource names stored there
    unsafe_no_fsync = true           # optional: acknowledge without fsync (lossy data only)

``resources`` feeds kube-apiserver's ``--etcd-servers-overrides`` (``group/resource#servers``,
the core group written as an empty group: ``/events``). A partition without resources is still
served (directly or through the router), but kube-apiserver cannot be told about it.
"""

from __future__ import annotations

import bisect
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAP",
    "Partition",
    "PartitionMap",
    "PartitionMapError",
    "etcd_servers_overrides",
    "load_map",
    "parse_map",
    "prefix_end",
]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_RESOURCE = re.compile(r"^[a-z0-9.-]*/[a-z0-9]+$")


class PartitionMapError(ValueError):
    """The partition map is malformed; the message says what and where."""


@dataclass(frozen=True)
class Partition:
    name: str
    prefixes: tuple[bytes, ...] = ()
    resources: tuple[str, ...] = ()
    default: bool = False
    unsafe_no_fsync: bool = False

    def describe_prefixes(self) -> str:
        if self.default:
            return "(every other key)"
        return ", ".join(p.decode("utf-8", "backslashreplace") for p in self.prefixes)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's GetPrefixRangeEnd);
    b"\\0" (no upper bound) for a prefix of only 0xff bytes."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


@dataclass
class PartitionMap:
    partitions: tuple[Partition, ...]
    default: Partition
    # sorted, disjoint [start, end) intervals of owned prefixes, with their owners
    _starts: list[bytes] = field(default_factory=list, repr=False)
    _ends: list[bytes] = field(default_factory=list, repr=False)
    _owners: list[Partition] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        intervals = sorted((p, prefix_end(p), part) for part in self.partitions for p in part.prefixes)
        self._starts = [start for start, _end, _part in intervals]
        self._ends = [end for _start, end, _part in intervals]
        self._owners = [part for _start, _end, part in intervals]

    def __getitem__(self, name: str) -> Partition:
        for part in self.partitions:
            if part.name == name:
                return part
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.partitions]

    def owner(self, key: bytes) -> Partition:
        """The partition that owns ``key``."""
        i = bisect.bisect_right(self._starts, key) - 1
        if i >= 0 and key.startswith(self._starts[i]):
            return self._owners[i]
        return self.default

    def owners(self, key: bytes, range_end: bytes = b"") -> list[Partition]:
        """Every partition holding some key of etcd's range (key, range_end), in map order.

        range_end follows etcd: empty means the single key, b"\\0" means every key >= key."""
        if not range_end:
            return [self.owner(key)]
        upper: bytes | None = None if range_end == b"\x00" else range_end
        if upper is not None and key >= upper:
            return [self.owner(key)]  # an empty range; the partition answers it (empty or error)
        found: set[str] = set()
        cursor: bytes | None = key  # None: everything up to the end of the keyspace is covered
        gap = False
        for start, end, part in zip(self._starts, self._ends, self._owners, strict=True):
            if end != b"\x00" and end <= cursor:
                continue
            if upper is not None and start >= upper:
                break
            found.add(part.name)
            if start > cursor:
                gap = True  # keys between the cursor and this prefix belong to the default partition
            if end == b"\x00":
                cursor = None
                break
            cursor = end
        if cursor is not None and (upper is None or cursor < upper):
            gap = True
        if gap:
            found.add(self.default.name)
        return [p for p in self.partitions if p.name in found]


def parse_map(doc: Mapping[str, Any], source: str = "partition map") -> PartitionMap:
    """Validate a decoded map document (see the module docstring) and build the map."""
    if not isinstance(doc, Mapping):
        raise PartitionMapError(f"{source}: expected a table with a 'partitions' table")
    unknown = set(doc) - {"partitions"}
    if unknown:
        raise PartitionMapError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    raw = doc.get("partitions")
    if not isinstance(raw, Mapping) or not raw:
        raise PartitionMapError(f"{source}: 'partitions' must be a non-empty table of partition names")
    partitions: list[Partition] = []
    owner_of: dict[bytes, str] = {}
    owner_of_resource: dict[str, str] = {}
    for name, spec in raw.items():
        where = f"{source}: partition {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PartitionMapError(
                f"{where}: bad name (use 1-63 lower-case letters, digits, '-' or '_', "
                "starting and ending with a letter or digit; it names the data directory)"
            )
        if not isinstance(spec, Mapping):
            raise PartitionMapError(f"{where}: expected a table")
        extra = set(spec) - {"prefixes", "resources", "default", "unsafe_no_fsync"}
        if extra:
            raise PartitionMapError(f"{where}: unknown key(s): {', '.join(sorted(extra))}")
        is_default = spec.get("default", False)
        no_fsync = spec.get("unsafe_no_fsync", False)
        if not isinstance(is_default, bool) or not isinstance(no_fsync, bool):
            raise PartitionMapError(f"{where}: 'default' and 'unsafe_no_fsync' must be true or false")
        prefixes = _string_list(spec.get("prefixes", []), f"{where}: 'prefixes'")
        resources = _string_list(spec.get("resources", []), f"{where}: 'resources'")
        if is_default and prefixes:
            raise PartitionMapError(f"{where}: the default partition owns every unclaimed key; "
                                    "it must not list prefixes")
        if not is_default and not prefixes:
            raise PartitionMapError(f"{where}: owns no prefixes (only the default partition may)")
        encoded: list[bytes] = []
        for text in prefixes:
            prefix = text.encode()
            if not prefix:
                raise PartitionMapError(f"{where}: empty prefix (use the default partition for all keys)")
            if prefix in owner_of:
                raise PartitionMapError(
                    f"{where}: duplicate prefix {text!r} (already owned by partition {owner_of[prefix]!r})"
                )
            for other, other_owner in owner_of.items():
                if prefix.startswith(other) or other.startswith(prefix):
                    raise PartitionMapError(
                        f"{where}: prefix {text!r} overlaps prefix {other.decode()!r} "
                        f"of partition {other_owner!r}"
                    )
            owner_of[prefix] = name
            encoded.append(prefix)
        for resource in resources:
            if not _RESOURCE.match(resource):
                raise PartitionMapError(
                    f"{where}: bad resource {resource!r} (kube-apiserver's group/resource, "
                    "e.g. '/events' for the core group or 'coordination.k8s.io/leases')"
                )
            if resource in owner_of_resource:
                raise PartitionMapError(f"{where}: resource {resource!r} is already mapped to "
                                        f"partition {owner_of_resource[resource]!r}")
            owner_of_resource[resource] = name
        partitions.append(Partition(name, tuple(encoded), tuple(resources), is_default, no_fsync))
    defaults = [p for p in partitions if p.default]
    if not defaults:
        raise PartitionMapError(f"{source}: no default partition (mark exactly one partition "
                                "'default = true'; it owns every key no prefix matches)")
    if len(defaults) > 1:
        raise PartitionMapError(f"{source}: more than one default partition: "
                                f"{', '.join(p.name for p in defaults)}")
    if defaults[0].resources:
        raise PartitionMapError(f"{source}: the default partition takes every resource without an "
                                "override; it must not list resources")
    # the default partition first: it serves --etcd-servers and the first port
    ordered = tuple(sorted(partitions, key=lambda p: not p.default))
    return PartitionMap(ordered, defaults[0])


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PartitionMapError(f"{where} must be a list of strings")
    return list(value)


def load_map(path: str | Path) -> PartitionMap:
    """Read a map file: TOML unless its name ends in .json."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PartitionMapError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(data)
        else:
            doc = tomllib.loads(data.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PartitionMapError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
    return parse_map(doc, str(path))


# kube-apiserver's hottest resources, each on its own partition (etcd prefix /registry/)
DEFAULT_MAP_DOC: dict[str, Any] = {
    "partitions": {
        "default": {"default": True},
        "events": {"prefixes": ["/registry/events/"], "resources": ["/events"]},
        "leases": {"prefixes": ["/registry/leases/"], "resources": ["coordination.k8s.io/leases"]},
        "pods": {"prefixes": ["/registry/pods/"], "resources": ["/pods"]},
    }
}
DEFAULT_MAP = parse_map(DEFAULT_MAP_DOC, "built-in partition map")


def etcd_servers_overrides(pmap: PartitionMap, endpoints: Mapping[str, Sequence[str]]) -> str:
    """kube-apiserver's --etcd-servers-overrides value: ``group/resource#server;server`` entries
    joined by commas, for every resource of every non-default partition."""
    entries = []
    for part in pmap.partitions:
        for resource in part.resources:
            entries.append(f"{resource}#{';'.join(endpoints[part.name])}")
    return ",".join(entries)
