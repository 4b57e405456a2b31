"""Label and field selectors, parsed and matched as the real API does.

Label selectors (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors):
`a=b`, `a==b`, `a!=b`, `a in (b,c)`, `a notin (b,c)`, `a` (exists), `!a` (does not exist), joined by commas
(AND). Field selectors (https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/):
`=`, `==`, `!=` on metadata.name and metadata.namespace for every kind, plus the kind-specific fields in
`FIELDS` (the real server supports more per kind, e.g. `involvedObject.*` for Events: not yet); any other
field is 400 BadRequest `field label not supported: <field>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.k8s_sim import errors

FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
    "Node": ("spec.unschedulable",),
    "Job": ("status.successful",),
    "Event": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
}

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")

Matcher = Callable[[dict[str, Any]], bool]


def _split_top(text: str) -> list[str]:
    """Split on the commas that are outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def label_selector(text: str | None) -> Matcher:
    if not text:
        return lambda labels: True
    requirements: list[Matcher] = []
    for part in _split_top(text):
        if m := _SET.match(part):
            key, op = m[1], m[2]
            values = {v.strip() for v in m[3].split(",") if v.strip()}
            if op == "in":
                requirements.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                requirements.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := _EQ.match(part):
            key, op, value = m[1], m[2], m[3]
            if op == "!=":
                requirements.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                requirements.append(lambda labels, k=key, v=value: k in labels and labels[k] == v)
        elif m := _EXISTS.match(part):
            negate, key = m[1] == "!", m[2]
            requirements.append(lambda labels, k=key, n=negate: (k in labels) != n)
        else:
            raise errors.bad_request(
                f"unable to parse requirement: found '{part.strip()}', expected: identifier"
            )
    return lambda labels: all(r(labels) for r in requirements)


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(text: str | None, kind: str) -> Callable[[dict[str, Any]], bool]:
    if not text:
        return lambda obj: True
    supported = ("metadata.name", "metadata.namespace", *FIELDS.get(kind, ()))
    requirements = []
    for part in _split_top(text):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = m[1], m[2], m[3]
        if key not in supported:
            raise errors.bad_request(f"field label not supported: {key}")
        if op == "!=":
            requirements.append(lambda obj, k=key, v=value: _field_value(obj, k) != v)
        else:
            requirements.append(lambda obj, k=key, v=value: _field_value(obj, k) == v)
    return lambda obj: all(r(obj) for r in requirements)
