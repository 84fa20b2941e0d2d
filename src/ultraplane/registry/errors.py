"""The Distribution Spec's error codes and their JSON bodies."""

from __future__ import annotations

from typing import Any

import orjson

# code -> (HTTP status, the spec's message)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a manifest or blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
}


class RegistryError(Exception):
    """An error the API answers with the spec's status and body; `status` overrides the code's default."""

    def __init__(self, code: str, detail: Any = None, *, status: int | None = None,
                 message: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        default_status, default_message = ERROR_CODES[code]
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or []
        self.details: list[Any] = [detail]  # one error entry each, e.g. every missing blob of a manifest
        super().__init__(f"{code}: {self.message}")

    @classmethod
    def each(cls, code: str, details: list[Any]) -> RegistryError:
        """One response listing the same error for each detail, as the spec allows ("one or more")."""
        error = cls(code, details[0])
        error.details = details
        return error

    def body(self) -> bytes:
        errors = []
        for detail in self.details:
            error: dict[str, Any] = {"code": self.code, "message": self.message}
            if detail is not None:
                error["detail"] = detail
            errors.append(error)
        return orjson.dumps({"errors": errors})
