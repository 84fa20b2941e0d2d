"""Errors raised by the store, carrying etcd's exact messages and gRPC status codes.

Clients match on these strings, so they are etcd's, byte for byte. ``code`` is the
numeric gRPC status code the etcd adapter sends with the message.
"""

from __future__ import annotations

# gRPC status codes (numeric values are fixed by the gRPC spec).
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16


class StoreError(Exception):
    """An error with an etcd message and a gRPC status code."""

    code: int = UNKNOWN
    message: str = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


def _error(name: str, code: int, message: str) -> type[StoreError]:
    return type(name, (StoreError,), {"code": code, "message": message})


# KV
EmptyKey = _error("EmptyKey", INVALID_ARGUMENT, "etcdserver: key is not provided")
KeyNotFound = _error("KeyNotFound", INVALID_ARGUMENT, "etcdserver: key not found")
ValueProvided = _error("ValueProvided", INVALID_ARGUMENT, "etcdserver: value is provided")
LeaseProvided = _error("LeaseProvided", INVALID_ARGUMENT, "etcdserver: lease is provided")
TooManyOps = _error("TooManyOps", INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DuplicateKey = _error("DuplicateKey", INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
Compacted = _error("Compacted", OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FutureRevision = _error("FutureRevision", OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NoSpace = _error("NoSpace", RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
RequestTooLarge = _error("RequestTooLarge", INVALID_ARGUMENT, "etcdserver: request is too large")

# Leases
LeaseNotFound = _error("LeaseNotFound", NOT_FOUND, "etcdserver: requested lease not found")
LeaseExists = _error("LeaseExists", FAILED_PRECONDITION, "etcdserver: lease already exists")
LeaseTTLTooLarge = _error("LeaseTTLTooLarge", OUT_OF_RANGE, "etcdserver: too large lease TTL")

# Auth (etcdserver/api/v3rpc/rpctypes/error.go)
RootUserNotExist = _error("RootUserNotExist", FAILED_PRECONDITION, "etcdserver: root user does not exist")
RootRoleNotExist = _error("RootRoleNotExist", FAILED_PRECONDITION, "etcdserver: root user does not have root role")
UserAlreadyExist = _error("UserAlreadyExist", FAILED_PRECONDITION, "etcdserver: user name already exists")
UserEmpty = _error("UserEmpty", INVALID_ARGUMENT, "etcdserver: user name is empty")
UserNotFound = _error("UserNotFound", FAILED_PRECONDITION, "etcdserver: user name not found")
RoleAlreadyExist = _error("RoleAlreadyExist", FAILED_PRECONDITION, "etcdserver: role name already exists")
RoleNotFound = _error("RoleNotFound", FAILED_PRECONDITION, "etcdserver: role name not found")
RoleEmpty = _error("RoleEmpty", INVALID_ARGUMENT, "etcdserver: role name is empty")
AuthFailed = _error("AuthFailed", INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
PermissionDenied = _error("PermissionDenied", PERMISSION_DENIED, "etcdserver: permission denied")
RoleNotGranted = _error("RoleNotGranted", FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
PermissionNotGranted = _error(
    "PermissionNotGranted", FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
AuthNotEnabled = _error("AuthNotEnabled", FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
InvalidAuthToken = _error("InvalidAuthToken", UNAUTHENTICATED, "etcdserver: invalid auth token")
InvalidAuthMgmt = _error("InvalidAuthMgmt", INVALID_ARGUMENT, "etcdserver: invalid auth management")
AuthOldRevision = _error("AuthOldRevision", INVALID_ARGUMENT, "etcdserver: revision of auth store is old")
# etcd 3.4 has no gRPC mapping for this one, so its server sends the internal auth error text with
# code Unknown (observed against etcd 3.4.23 when a password is given for a --no-password user).
NoPasswordUser = _error(
    "NoPasswordUser", UNKNOWN, "auth: authentication failed, password was given for no password user"
)
