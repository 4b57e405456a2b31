"""Faults of the API server itself: the next N requests matching a path and verb fail, are throttled, or wait.

A rule (`POST /_sim/faults`) has:

- `path`: a regular expression searched in the request path (default: every path; `/_sim/...` and the
  health endpoints are never affected);
- `verbs`: Kubernetes verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`) and/or HTTP
  methods (`GET`, `POST`, ...); default: all;
- `count`: how many matching requests it affects (default 1; null: until removed);
- `status`: the answer instead of the real one: 500 (`InternalError`, "Internal error occurred: <message>"),
  429 (`TooManyRequests`, "Too many requests, please try again later.", a `Retry-After` header and
  `details.retryAfterSeconds`, as API Priority and Fairness answers:
  https://kubernetes.io/docs/concepts/cluster-administration/flow-control/), 503 (`ServiceUnavailable`),
  504 (`Timeout`), or any other code (reason from the code);
- `retryAfterSeconds` (429; default 1), `delaySeconds` (wait before answering, with or without a status),
  `message`;
- `controllers` (default false): the simulated controllers' pod creates meet the rule too, as the POST
  `/api/v1/namespaces/<ns>/pods` (verb `create`) that the Job, ReplicaSet, DaemonSet and StatefulSet
  controllers send (its status only: a controller does not wait). Off by default, so that a rule aimed at
  the client under test is not spent by a controller.

Rules are tried in the order they were added; the first that matches and has requests left applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tests.k8s_sim import errors

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class FaultRule:
    id: int
    path: str = ""
    verbs: tuple[str, ...] = ()
    count: int | None = 1
    status: int | None = None
    retry_after_s: int = 1
    delay_s: float = 0.0
    message: str = "injected fault"
    controllers: bool = False
    hits: int = field(default=0)

    def matches(self, path: str, method: str, verb: str, controller: bool = False) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if controller and not (self.controllers and self.status is not None):
            return False
        if self.verbs and method not in self.verbs and verb not in self.verbs:
            return False
        return re.search(self.path, path) is not None if self.path else True

    def error(self) -> errors.ApiError | None:
        if self.status is None:
            return None
        code = self.status
        if code == 429:
            return errors.ApiError(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                {"retryAfterSeconds": self.retry_after_s},
                {"Retry-After": str(self.retry_after_s)},
            )
        if code == 500:
            return errors.ApiError(
                500,
                "InternalError",
                f"Internal error occurred: {self.message}",
                {"causes": [{"message": self.message}]},
            )
        if code == 503:
            return errors.ApiError(
                503,
                "ServiceUnavailable",
                self.message or "the server is currently unable to handle the request",
            )
        if code == 504:
            return errors.ApiError(
                504,
                "Timeout",
                self.message or "the server was unable to return a response in the time allotted",
                {"retryAfterSeconds": self.retry_after_s},
            )
        return errors.ApiError(code, _REASONS.get(code, "Unknown"), self.message)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "verbs": list(self.verbs),
            "count": self.count,
            "status": self.status,
            "retryAfterSeconds": self.retry_after_s,
            "delaySeconds": self.delay_s,
            "message": self.message,
            "controllers": self.controllers,
            "hits": self.hits,
        }


class Faults:
    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self._ids = 0

    def add(self, spec: dict[str, Any]) -> FaultRule:
        verbs = spec.get("verbs") or ([spec["verb"]] if spec.get("verb") else [])
        normalized = []
        for verb in verbs:
            if verb.upper() in METHODS:
                normalized.append(verb.upper())
            elif verb.lower() in VERBS:
                normalized.append(verb.lower())
            else:
                raise ValueError(f"unknown verb {verb!r}: one of {', '.join(VERBS + METHODS)}")
        path = spec.get("path") or ""
        re.compile(path)
        status = spec.get("status")
        if status is not None and not (400 <= int(status) <= 599):
            raise ValueError("status must be an HTTP error code (400-599)")
        if status is None and not spec.get("delaySeconds"):
            raise ValueError("a fault needs a status, a delaySeconds, or both")
        self._ids += 1
        rule = FaultRule(
            self._ids,
            path,
            tuple(normalized),
            spec.get("count", 1),
            int(status) if status is not None else None,
            int(spec.get("retryAfterSeconds", 1)),
            float(spec.get("delaySeconds") or 0),
            spec.get("message") or "injected fault",
            bool(spec.get("controllers", False)),
        )
        self.rules.append(rule)
        return rule

    def match(self, path: str, method: str, verb: str, controller: bool = False) -> FaultRule | None:
        """The first rule for a request (`controller`: a simulated controller's write) that applies; its
        hit is counted."""
        for rule in self.rules:
            if rule.matches(path, method, verb, controller):
                rule.hits += 1
                return rule
        return None

    def remove(self, rule_id: int | None = None) -> None:
        self.rules = [r for r in self.rules if rule_id is not None and r.id != rule_id]
