"""The CEL functions kube-apiserver adds to CRD validation rules, for cel-python (``celpy``).

cel-python calls a receiver-style call ``x.f(a)`` as the function ``f(x, a)``, so each extension below
is a plain function. Covered: cel-go's strings extension (``charAt``, ``indexOf``, ``lowerAscii``,
``replace``, ``split``, ``substring``, ``trim``, ``join`` ...), Kubernetes' list library (``isSorted``,
``sum``, ``min``, ``max``, ``indexOf``, ``lastIndexOf``), regex library (``find``, ``findAll``), the
quantity library (``quantity``, ``isQuantity``, ``compareTo``, ``add``, ``asInteger`` ...) and the
optional type's ``hasValue``/``value``/``orValue`` (``oldSelf`` with ``optionalOldSelf``).
Errors raise ``ValueError``/``TypeError`` with cel-go's wording where the caller reports it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import re2
from celpy import celtypes


class Optional:
    """CEL's optional value: oldSelf when ``optionalOldSelf`` is set."""

    __slots__ = ("present", "value")

    def __init__(self, present: bool, value: Any = None) -> None:
        self.present = present
        self.value = value


def _no_overload(name: str) -> TypeError:
    return TypeError(f"no such overload: {name}")


def has_value(target: Any) -> celtypes.BoolType:
    if not isinstance(target, Optional):
        raise _no_overload("hasValue")
    return celtypes.BoolType(target.present)


def opt_value(target: Any) -> Any:
    if not isinstance(target, Optional):
        raise _no_overload("value")
    if not target.present:
        raise ValueError("optional.none() dereference")
    return target.value


def or_value(target: Any, default: Any) -> Any:
    if not isinstance(target, Optional):
        raise _no_overload("orValue")
    return target.value if target.present else default


# ---------------------------------------------------------------------------- strings (cel-go ext)
def _s(value: Any) -> celtypes.StringType:
    return celtypes.StringType(value)


def char_at(text: Any, index: Any) -> celtypes.StringType:
    value, i = str(text), int(index)
    if not 0 <= i <= len(value):
        raise IndexError(f"index out of range: {i}")
    return _s(value[i:i + 1])


def index_of(target: Any, item: Any, offset: Any = 0) -> celtypes.IntType:
    if isinstance(target, list):
        return celtypes.IntType(next((i for i, v in enumerate(target) if v == item), -1))
    text, start = str(target), int(offset)
    if not 0 <= start <= len(text):
        raise IndexError(f"index out of range: {start}")
    return celtypes.IntType(text.find(str(item), start))


def last_index_of(target: Any, item: Any, offset: Any = None) -> celtypes.IntType:
    if isinstance(target, list):
        return celtypes.IntType(next((i for i in range(len(target) - 1, -1, -1) if target[i] == item), -1))
    text = str(target)
    end = len(text) if offset is None else int(offset) + len(str(item))
    return celtypes.IntType(text.rfind(str(item), 0, end))


def lower_ascii(text: Any) -> celtypes.StringType:
    return _s("".join(c.lower() if c.isascii() else c for c in str(text)))


def upper_ascii(text: Any) -> celtypes.StringType:
    return _s("".join(c.upper() if c.isascii() else c for c in str(text)))


def replace(text: Any, old: Any, new: Any, count: Any = -1) -> celtypes.StringType:
    return _s(str(text).replace(str(old), str(new), int(count)))


def split(text: Any, separator: Any, limit: Any = -1) -> celtypes.ListType:
    n = int(limit)
    if n == 0:
        return celtypes.ListType([])
    value, sep = str(text), str(separator)
    parts = list(value) if not sep else value.split(sep, -1 if n < 0 else n - 1)
    if not sep and n > 0 and len(parts) > n:
        parts = [*parts[:n - 1], "".join(parts[n - 1:])]
    return celtypes.ListType([_s(p) for p in parts])


def substring(text: Any, start: Any, end: Any = None) -> celtypes.StringType:
    value = str(text)
    stop = len(value) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(value):
        raise IndexError(f"index out of range: {start}")
    return _s(value[int(start):stop])


def trim(text: Any) -> celtypes.StringType:
    return _s(str(text).strip())


def join(values: Any, separator: Any = "") -> celtypes.StringType:
    return _s(str(separator).join(str(v) for v in values))


def reverse(text: Any) -> celtypes.StringType:
    return _s(str(text)[::-1])


# ---------------------------------------------------------------------------- lists (Kubernetes)
def _comparable(values: Any, name: str) -> list[Any]:
    if not isinstance(values, list):
        raise _no_overload(name)
    return list(values)


def is_sorted(values: Any) -> celtypes.BoolType:
    items = _comparable(values, "isSorted")
    return celtypes.BoolType(all(items[i] <= items[i + 1] for i in range(len(items) - 1)))


def sum_list(values: Any) -> Any:
    items = _comparable(values, "sum")
    if not items:
        return celtypes.IntType(0)
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total


def min_list(values: Any, *more: Any) -> Any:
    items = list(values) + list(more) if more or not isinstance(values, list) else list(values)
    if not items:
        raise ValueError("min(list) of empty list")
    return min(items)


def max_list(values: Any, *more: Any) -> Any:
    items = list(values) + list(more) if more or not isinstance(values, list) else list(values)
    if not items:
        raise ValueError("max(list) of empty list")
    return max(items)


# ---------------------------------------------------------------------------- regex (Kubernetes)
def find(text: Any, pattern: Any) -> celtypes.StringType:
    m = re2.search(str(pattern), str(text))
    return _s(m.group(0) if m else "")


def find_all(text: Any, pattern: Any, limit: Any = -1) -> celtypes.ListType:
    n = int(limit)
    found = [m.group(0) for m in re2.finditer(str(pattern), str(text))]
    return celtypes.ListType([_s(f) for f in (found if n < 0 else found[:n])])


# ---------------------------------------------------------------------------- quantity (Kubernetes)
_SUFFIX: dict[str, Decimal] = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60), "n": Decimal("1e-9"), "u": Decimal("1e-6"),
    "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
    "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?\d+))?$")


class Quantity:
    """resource.Quantity for CEL: compared by value, printed as written."""

    __slots__ = ("text", "value")

    def __init__(self, text: str, value: Decimal | None = None) -> None:
        self.text = text
        if value is None:
            m = _QUANTITY.match(text)
            if not m:
                raise ValueError("quantities must match the regular expression "
                                 "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
            value = Decimal(m.group(1)) * (Decimal(10) ** int(m.group(3)) if m.group(3)
                                           else _SUFFIX[m.group(2) or ""])
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return self.text


def quantity(text: Any) -> Quantity:
    return Quantity(str(text))


def is_quantity(text: Any) -> celtypes.BoolType:
    return celtypes.BoolType(bool(_QUANTITY.match(str(text))))


def _q(value: Any, name: str) -> Quantity:
    if isinstance(value, Quantity):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Quantity(str(int(value)))
    raise _no_overload(name)


def compare_to(left: Any, right: Any) -> celtypes.IntType:
    a, b = _q(left, "compareTo").value, _q(right, "compareTo").value
    return celtypes.IntType((a > b) - (a < b))


def is_less_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_q(left, "isLessThan").value < _q(right, "isLessThan").value)


def is_greater_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_q(left, "isGreaterThan").value > _q(right, "isGreaterThan").value)


def add(left: Any, right: Any) -> Quantity:
    total = _q(left, "add").value + _q(right, "add").value
    return Quantity(_plain_decimal(total), total)


def sub(left: Any, right: Any) -> Quantity:
    total = _q(left, "sub").value - _q(right, "sub").value
    return Quantity(_plain_decimal(total), total)


def _plain_decimal(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def is_integer(value: Any) -> celtypes.BoolType:
    number = _q(value, "isInteger").value
    return celtypes.BoolType(number == number.to_integral_value() and abs(number) < 2**63)


def as_integer(value: Any) -> celtypes.IntType:
    number = _q(value, "asInteger").value
    if number != number.to_integral_value() or abs(number) >= 2**63:
        raise ValueError("cannot convert value to integer")
    return celtypes.IntType(int(number))


def as_approximate_float(value: Any) -> celtypes.DoubleType:
    return celtypes.DoubleType(float(_q(value, "asApproximateFloat").value))


def sign(value: Any) -> celtypes.IntType:
    number = _q(value, "sign").value
    return celtypes.IntType((number > 0) - (number < 0))


FUNCTIONS: dict[str, Any] = {
    "hasValue": has_value, "value": opt_value, "orValue": or_value,
    "charAt": char_at, "indexOf": index_of, "lastIndexOf": last_index_of, "lowerAscii": lower_ascii,
    "upperAscii": upper_ascii, "replace": replace, "split": split, "substring": substring, "trim": trim,
    "join": join, "reverse": reverse,
    "isSorted": is_sorted, "sum": sum_list, "min": min_list, "max": max_list,
    "find": find, "findAll": find_all,
    "quantity": quantity, "isQuantity": is_quantity, "compareTo": compare_to, "isLessThan": is_less_than,
    "isGreaterThan": is_greater_than, "add": add, "sub": sub, "isInteger": is_integer, "asInteger": as_integer,
    "asApproximateFloat": as_approximate_float, "sign": sign,
}
