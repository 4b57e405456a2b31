"""The real API's error answers: `Status` objects with the same codes, reasons and messages.

Reference: https://kubernetes.io/docs/reference/using-api/api-concepts/ ("Responses" / status codes) and
the apimachinery `errors` package that builds them (NewNotFound, NewAlreadyExists, NewConflict, NewInvalid,
NewBadRequest, NewMethodNotSupported). The messages are the ones those functions write, e.g.
`pods "x" not found`, `jobs.batch "x" already exists`, `Pod "x" is invalid: spec.containers: Required value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ApiError(Exception):
    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    return details


def not_found(qualified: str, group: str, plural: str, name: str) -> ApiError:
    """404 NotFound: `pods "x" not found` (details.kind is the resource, as the real API writes it)."""
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', _details(name, group, plural))


def already_exists(qualified: str, group: str, plural: str, name: str) -> ApiError:
    """409 AlreadyExists, for a create of a name that is taken."""
    return ApiError(
        409, "AlreadyExists", f'{qualified} "{name}" already exists', _details(name, group, plural)
    )


def conflict(qualified: str, group: str, plural: str, name: str) -> ApiError:
    """409 Conflict, for an update carrying a resourceVersion that is no longer the object's."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; please apply '
        "your changes to the latest version and try again",
        _details(name, group, plural),
    )


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid: details.kind is the Kind here (NewInvalid takes a GroupKind); one cause per field error.

    Each cause is {"reason": "FieldValueRequired"|..., "message": "Required value", "field": "spec.x"}; the
    message joins "<field>: <message>" of the causes, in brackets when there is more than one.
    """
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    details = _details(name, group, kind)
    details["causes"] = causes
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {joined}', details)


def forbidden(qualified: str, group: str, plural: str, name: str, message: str) -> ApiError:
    """403 Forbidden, as admission refuses: `pods "x" is forbidden: <why>` (NewForbidden)."""
    return ApiError(
        403, "Forbidden", f'{qualified} "{name}" is forbidden: {message}', _details(name, group, plural)
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(method: str, qualified: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"{method} is not supported on resources of kind {qualified!r}")


def page_not_found() -> ApiError:
    """What the real server answers for a path it does not serve: 404 with reason NotFound."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def unsupported_media_type(content_type: str, accepted: tuple[str, ...] = ()) -> ApiError:
    """415: the real message lists the media types the endpoint reads (the simulator's: no protobuf)."""
    accepted = accepted or (
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    )
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
    )


def gone(message: str) -> ApiError:
    """410 Expired: a watch or continue token from a resourceVersion older than the kept history."""
    return ApiError(410, "Expired", message)


def cause(reason: str, field_path: str, message: str) -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field_path}
