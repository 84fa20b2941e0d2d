"""Plain data types shared by the store and its adapters.

They mirror etcd's mvccpb/etcdserverpb shapes but do not depend on protobuf: the
store is a library, and the etcd gRPC adapter (or the API server, in-process)
converts at its edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class KeyValue:
    """One version of one key. Immutable once created: history and events share it."""

    __slots__ = ("key", "create_revision", "mod_revision", "version", "value", "lease")

    def __init__(
        self, key: bytes, create_revision: int, mod_revision: int, version: int, value: bytes, lease: int
    ) -> None:
        self.key = key
        self.create_revision = create_revision
        self.mod_revision = mod_revision
        self.version = version
        self.value = value
        self.lease = lease

    def __repr__(self) -> str:
        return (
            f"KeyValue({self.key!r}, c={self.create_revision}, m={self.mod_revision}, "
            f"v={self.version}, lease={self.lease}, value={self.value[:32]!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyValue) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )

    __hash__ = None  # type: ignore[assignment]


class EventType(IntEnum):
    PUT = 0
    DELETE = 1


class Event:
    """A change at one revision. For DELETE, ``kv`` holds the key with mod_revision set to
    the deleting revision and empty value (as etcd reports it)."""

    __slots__ = ("type", "kv", "prev_kv")

    def __init__(self, type: EventType, kv: KeyValue, prev_kv: KeyValue | None = None) -> None:
        self.type = type
        self.kv = kv
        self.prev_kv = prev_kv

    def __repr__(self) -> str:
        return f"Event({self.type.name}, {self.kv!r})"


class SortOrder(IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


@dataclass(slots=True)
class RangeRequest:
    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    more: bool
    count: int
    revision: int  # the store revision the read was served at (header revision)


@dataclass(slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(slots=True)
class DeleteRangeRequest:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(slots=True)
class DeleteRangeResult:
    revision: int
    deleted: int
    prev_kvs: list[KeyValue] = field(default_factory=list)


class CompareTarget(IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareResult(IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


@dataclass(slots=True)
class Compare:
    result: CompareResult
    target: CompareTarget
    key: bytes
    # exactly one of these is meaningful, chosen by ``target``
    version: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    value: bytes = b""
    lease: int = 0
    range_end: bytes = b""


@dataclass(slots=True)
class TxnRequest:
    compare: list[Compare] = field(default_factory=list)
    success: list[RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest] = field(default_factory=list)
    failure: list[RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest] = field(default_factory=list)


@dataclass(slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    # one result per executed op, in order: RangeResult | PutResult | DeleteRangeResult | TxnResult
    responses: list[RangeResult | PutResult | DeleteRangeResult | TxnResult]


@dataclass(slots=True)
class LeaseInfo:
    id: int
    ttl: int  # remaining seconds, -1 once expired
    granted_ttl: int
    keys: list[bytes] = field(default_factory=list)
