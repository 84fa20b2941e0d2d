"""kube-apiserver's ``Status`` error bodies, with its exact messages."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the REST layer returns as a ``Status`` object with its HTTP code."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def success_status(details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details is not None:
        body["details"] = details
    return body


def qualified(group: str, plural: str) -> str:
    """The group-qualified resource name kube puts in messages: ``pods``, ``deployments.apps``."""
    return f"{plural}.{group}" if group else plural


def _details(group: str, plural: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = plural
    return details


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(status(404, "NotFound", f'{qualified(group, plural)} "{name}" not found',
                           _details(group, plural, name)))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(status(409, "AlreadyExists", f'{qualified(group, plural)} "{name}" already exists',
                           _details(group, plural, name)))


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    return ApiError(status(409, "Conflict",
                           f'Operation cannot be fulfilled on {qualified(group, plural)} "{name}": {why}',
                           _details(group, plural, name)))


MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def bad_request(message: str) -> ApiError:
    return ApiError(status(400, "BadRequest", message))


def method_not_allowed(message: str) -> ApiError:
    return ApiError(status(405, "MethodNotAllowed", message))


def expired(message: str) -> ApiError:
    return ApiError(status(410, "Expired", message))


def unauthorized() -> ApiError:
    return ApiError(status(401, "Unauthorized", "Unauthorized"))


def forbidden(message: str, group: str = "", plural: str = "", name: str = "") -> ApiError:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if plural:
        details["kind"] = plural
    return ApiError(status(403, "Forbidden", message, details))


def invalid(kind: str, group: str, name: str, causes: list[dict[str, Any]]) -> ApiError:
    """422 Invalid: ``Kind.group "name" is invalid: [cause, cause]`` (brackets only for several causes)."""
    try:
        from ultraplane.apiserver import validation

        return ApiError(validation.invalid_status(kind, name, causes, group=group))
    except (ImportError, AttributeError):
        pass
    texts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = causes
    return ApiError(status(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {joined}', details))
