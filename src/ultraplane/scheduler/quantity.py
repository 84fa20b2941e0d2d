"""Resource quantities as integers: cpu in millicores, everything else in base units (bytes, counts)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from functools import lru_cache

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}


@lru_cache(maxsize=4096)
def parse(value: str | int | float, milli: bool = False) -> int:
    """Parse a Kubernetes quantity, rounding up like resource.Quantity's MilliValue()/Value()."""
    text = str(value).strip()
    try:
        if text[-2:] in _BINARY:
            amount = Decimal(text[:-2]) * _BINARY[text[-2:]]
        elif text and text[-1] in _DECIMAL and not text[-1].isdigit():
            amount = Decimal(text[:-1]) * _DECIMAL[text[-1]]
        else:
            amount = Decimal(text)
    except (InvalidOperation, IndexError):
        return 0
    if milli:
        amount *= 1000
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def parse_resource(name: str, value: str | int | float) -> int:
    return parse(value, milli=name == "cpu")
