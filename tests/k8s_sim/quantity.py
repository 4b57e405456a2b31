"""Resource quantities (`500m`, `2Gi`, `1e3`, `8`) read as the real API reads them.

Reference: https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/ (binary suffixes
Ki Mi Gi Ti Pi Ei, decimal suffixes n u m "" k M G T P E, decimal exponents e/E). Values are exact
fractions; `milli` rounds up as the scheduler's MilliValue() does.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")


def parse(value: Any) -> Fraction:
    """A quantity as an exact number; ValueError when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    if isinstance(value, (int, float)):
        return Fraction(value)
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(
            f"quantities must match the regular expression "
            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value!r}"
        )
    number = Fraction(match[1])
    if match[2]:
        return number * Fraction(10) ** int(match[2][1:])
    suffix = match[3] or ""
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def milli(value: Any) -> int:
    """MilliValue(): thousandths, rounded up (cpu is counted in millicores)."""
    return math.ceil(parse(value) * 1000)


def whole(value: Any) -> int:
    """Value(): rounded up to an integer (bytes, GPUs, pods)."""
    return math.ceil(parse(value))


def is_integer(value: Any) -> bool:
    try:
        return parse(value).denominator == 1
    except ValueError:
        return False
