"""CEL functions kro offers beyond the CEL standard, for cel-python.

cel-python calls a method `x.f(a)` as the function `f(x, a)`, so receiver-style extensions (cel-go's
strings and lists extensions, Kubernetes' quantity and list helpers) are plain functions here.
Namespaced functions (`base64.encode`, `json.marshal`, `hash.sha256`, `random.seededString`) are
methods on a `Namespace` marker bound to the namespace's name. Behaviour follows the documented
semantics of kro's library (e.g. `random.seededString` draws from sha256 of the seed, 4 bytes a
character, over 0-9a-z).
"""

from __future__ import annotations

import base64 as b64
import hashlib
import json as jsonlib
import re
from decimal import Decimal
from typing import Any

import celpy
from celpy import celtypes


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name})"


class Optional:
    """CEL's optional value (`a.?b`): present with a value, or absent."""

    __slots__ = ("present", "value")

    def __init__(self, present: bool, value: Any = None) -> None:
        self.present = present
        self.value = value


NAMESPACES = {name: Namespace(name) for name in ("base64", "json", "hash", "random", "optional")}
_NONE = Optional(False)


def _ns(receiver: Any, name: str, function: str) -> None:
    if not (isinstance(receiver, Namespace) and receiver.name == name):
        raise TypeError(f"no such overload: {function}")


def _str(value: Any) -> celtypes.StringType:
    return celtypes.StringType(value)


def _strings(values: Any) -> celtypes.ListType:
    return celtypes.ListType([_str(v) for v in values])


# ---------------------------------------------------------------------------- optionals


def opt_field(target: Any, name: Any) -> Optional:
    if isinstance(target, Optional):
        if not target.present:
            return _NONE
        target = target.value
    if isinstance(target, dict):
        key = celtypes.StringType(name)
        return Optional(True, target[key]) if key in target else _NONE
    raise TypeError(f"no such overload: optional field selection on {type(target).__name__}")


def opt_index(target: Any, index: Any) -> Optional:
    if isinstance(target, Optional):
        if not target.present:
            return _NONE
        target = target.value
    if isinstance(target, list):
        return Optional(True, target[int(index)]) if 0 <= int(index) < len(target) else _NONE
    if isinstance(target, dict):
        return Optional(True, target[index]) if index in target else _NONE
    raise TypeError(f"no such overload: optional index on {type(target).__name__}")


def or_value(target: Any, default: Any) -> Any:
    if isinstance(target, Optional):
        return target.value if target.present else default
    raise TypeError("no such overload: orValue")


def has_value(target: Any) -> celtypes.BoolType:
    if isinstance(target, Optional):
        return celtypes.BoolType(target.present)
    raise TypeError("no such overload: hasValue")


def opt_value(target: Any) -> Any:
    if isinstance(target, Optional):
        if not target.present:
            raise ValueError("optional.none() dereference")
        return target.value
    raise TypeError("no such overload: value")


def optional_of(receiver: Any, value: Any) -> Optional:
    _ns(receiver, "optional", "optional.of")
    return Optional(True, value)


def optional_none(receiver: Any) -> Optional:
    _ns(receiver, "optional", "optional.none")
    return _NONE


# ---------------------------------------------------------------------------- strings (cel-go ext)


def split(text: Any, separator: Any, limit: Any = None) -> celtypes.ListType:
    if limit is None or int(limit) < 0:
        return _strings(str(text).split(str(separator)) if separator else list(str(text)))
    if int(limit) == 0:
        return celtypes.ListType([])
    return _strings(str(text).split(str(separator), int(limit) - 1))


def join(values: Any, separator: Any = "") -> celtypes.StringType:
    return _str(str(separator).join(str(v) for v in values))


def lower_ascii(text: Any) -> celtypes.StringType:
    return _str("".join(c.lower() if c.isascii() else c for c in str(text)))


def upper_ascii(text: Any) -> celtypes.StringType:
    return _str("".join(c.upper() if c.isascii() else c for c in str(text)))


def replace(text: Any, old: Any, new: Any, count: Any = None) -> celtypes.StringType:
    return _str(str(text).replace(str(old), str(new), -1 if count is None else int(count)))


def trim(text: Any) -> celtypes.StringType:
    return _str(str(text).strip())


def substring(text: Any, start: Any, end: Any = None) -> celtypes.StringType:
    value = str(text)
    stop = len(value) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(value):
        raise IndexError(f"substring out of range: [{start}:{stop}] of length {len(value)}")
    return _str(value[int(start):stop])


def index_of(target: Any, item: Any, offset: Any = 0) -> celtypes.IntType:
    if isinstance(target, list):
        return celtypes.IntType(next((i for i, v in enumerate(target) if v == item), -1))
    return celtypes.IntType(str(target).find(str(item), int(offset)))


def last_index_of(target: Any, item: Any) -> celtypes.IntType:
    if isinstance(target, list):
        return celtypes.IntType(next((i for i in range(len(target) - 1, -1, -1) if target[i] == item), -1))
    return celtypes.IntType(str(target).rfind(str(item)))


def char_at(text: Any, index: Any) -> celtypes.StringType:
    value = str(text)
    if int(index) == len(value):
        return _str("")
    return _str(value[int(index)])


def _format_one(verb: str, value: Any) -> str:
    if verb == "s":
        if isinstance(value, celtypes.BoolType):
            return "true" if value else "false"
        if isinstance(value, list | dict):
            return jsonlib.dumps(_plain(value), separators=(", ", ": "))
        return str(value)
    if verb == "d":
        return str(int(value))
    if verb == "f":
        return f"{float(value):f}"
    if verb == "x":
        return value.hex() if isinstance(value, bytes) else format(int(value), "x")
    raise ValueError(f"unrecognized formatting clause %{verb}")


def format_string(text: Any, args: Any) -> celtypes.StringType:
    values = list(args)
    position = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal position
        if match.group(1) == "%":
            return "%"
        if position >= len(values):
            raise IndexError("index out of range: more formatting clauses than arguments")
        value = values[position]
        position += 1
        precision = match.group(0)[1:-1]
        if match.group(1) == "f" and precision:
            return f"{float(value):{precision}f}"
        return _format_one(match.group(1), value)

    return _str(re.sub(r"%(?:\.\d+)?([sdfxe%])", substitute, str(text)))


# ---------------------------------------------------------------------------- lists


def slice_list(values: Any, start: Any, end: Any) -> celtypes.ListType:
    if not 0 <= int(start) <= int(end) <= len(values):
        raise IndexError(f"cannot slice({start}, {end}), list is length {len(values)}")
    return celtypes.ListType(list(values)[int(start):int(end)])


def sum_list(values: Any) -> Any:
    if not values:
        return celtypes.IntType(0)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def flatten(values: Any, depth: Any = 1) -> celtypes.ListType:
    out: list[Any] = []
    for value in values:
        if isinstance(value, list) and int(depth) > 0:
            out.extend(flatten(value, int(depth) - 1))
        else:
            out.append(value)
    return celtypes.ListType(out)


def distinct(values: Any) -> celtypes.ListType:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return celtypes.ListType(out)


def reverse(target: Any) -> Any:
    if isinstance(target, list):
        return celtypes.ListType(list(reversed(target)))
    return _str(str(target)[::-1])


def merge(left: Any, right: Any) -> celtypes.MapType:
    return celtypes.MapType({**left, **right})


# ---------------------------------------------------------------------------- namespaces


def _plain(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, celtypes.NullType) or value is None:
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return b64.b64encode(value).decode()
    return str(value)


def encode(receiver: Any, value: Any) -> celtypes.StringType:
    _ns(receiver, "base64", "base64.encode")
    data = bytes(value) if isinstance(value, bytes) else str(value).encode()
    return _str(b64.b64encode(data).decode())


def decode(receiver: Any, value: Any) -> celtypes.BytesType:
    _ns(receiver, "base64", "base64.decode")
    text = str(value)
    return celtypes.BytesType(b64.b64decode(text + "=" * (-len(text) % 4)))


def marshal(receiver: Any, value: Any) -> celtypes.StringType:
    _ns(receiver, "json", "json.marshal")
    return _str(jsonlib.dumps(_plain(value), separators=(",", ":"), sort_keys=True))


def unmarshal(receiver: Any, value: Any) -> Any:
    _ns(receiver, "json", "json.unmarshal")
    return celpy.json_to_cel(jsonlib.loads(str(value)))


def fnv64a(receiver: Any, value: Any) -> celtypes.BytesType:
    _ns(receiver, "hash", "hash.fnv64a")
    digest = 0xCBF29CE484222325
    for byte in str(value).encode():
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return celtypes.BytesType(digest.to_bytes(8, "big"))


def sha256(receiver: Any, value: Any) -> celtypes.BytesType:
    _ns(receiver, "hash", "hash.sha256")
    return celtypes.BytesType(hashlib.sha256(str(value).encode()).digest())


def md5(receiver: Any, value: Any) -> celtypes.BytesType:
    _ns(receiver, "hash", "hash.md5")
    return celtypes.BytesType(hashlib.md5(str(value).encode()).digest())


_ALPHANUMERIC = "0123456789abcdefghijklmnopqrstuvwxyz"


def seeded_string(receiver: Any, length: Any, seed: Any) -> celtypes.StringType:
    _ns(receiver, "random", "random.seededString")
    n = int(length)
    if n <= 0:
        raise ValueError("random.seededString length must be positive")
    digest = hashlib.sha256(str(seed).encode()).digest()
    out = bytearray()
    for i in range(n):
        start = (i * 4) % len(digest)
        if start + 4 > len(digest):
            digest = hashlib.sha256(digest + bytes(out)).digest()
            start = 0
        out.append(ord(_ALPHANUMERIC[int.from_bytes(digest[start:start + 4], "big") % len(_ALPHANUMERIC)]))
    return _str(out.decode())


def seeded_int(receiver: Any, low: Any, high: Any, seed: Any) -> celtypes.IntType:
    _ns(receiver, "random", "random.seededInt")
    if int(low) >= int(high):
        raise ValueError("random.seededInt min must be less than max")
    value = int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "big")
    return celtypes.IntType(int(low) + value % (int(high) - int(low)))


# ---------------------------------------------------------------------------- quantity (Kubernetes)

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": Decimal("1e-9"),
           "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?\d+))?$")


class Quantity:
    def __init__(self, text: str) -> None:
        match = _QUANTITY.match(text.strip())
        if not match:
            raise ValueError(f"quantities must match the regular expression '{_QUANTITY.pattern}'")
        number = Decimal(match.group(1))
        if match.group(3):
            number *= Decimal(10) ** int(match.group(3))
        else:
            number *= Decimal(_SUFFIX[match.group(2) or ""])
        self.text = text.strip()
        self.value = number

    def __str__(self) -> str:
        return self.text


def quantity(text: Any) -> Quantity:
    return Quantity(str(text))


def _q(value: Any) -> Quantity:
    if isinstance(value, Quantity):
        return value
    if isinstance(value, int | float):
        return Quantity(str(value))
    raise TypeError("no such overload: expected a quantity")


def is_less_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_q(left).value < _q(right).value)


def is_greater_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_q(left).value > _q(right).value)


def compare_to(left: Any, right: Any) -> celtypes.IntType:
    a, b = _q(left).value, _q(right).value
    return celtypes.IntType((a > b) - (a < b))


def as_integer(value: Any) -> celtypes.IntType:
    number = _q(value).value
    if number != number.to_integral_value():
        raise ValueError("cannot convert value to integer")
    return celtypes.IntType(int(number))


def as_approximate_float(value: Any) -> celtypes.DoubleType:
    return celtypes.DoubleType(float(_q(value).value))


FUNCTIONS: dict[str, Any] = {
    "_optField": opt_field, "_optIndex": opt_index, "orValue": or_value, "hasValue": has_value,
    "value": opt_value, "of": optional_of, "none": optional_none,
    "split": split, "join": join, "lowerAscii": lower_ascii, "upperAscii": upper_ascii, "replace": replace,
    "trim": trim, "substring": substring, "indexOf": index_of, "lastIndexOf": last_index_of,
    "charAt": char_at, "format": format_string,
    "slice": slice_list, "sum": sum_list, "flatten": flatten, "distinct": distinct, "reverse": reverse,
    "merge": merge,
    "encode": encode, "decode": decode, "marshal": marshal, "unmarshal": unmarshal,
    "fnv64a": fnv64a, "sha256": sha256, "md5": md5, "seededString": seeded_string, "seededInt": seeded_int,
    "quantity": quantity, "isLessThan": is_less_than, "isGreaterThan": is_greater_than,
    "compareTo": compare_to, "asInteger": as_integer, "asApproximateFloat": as_approximate_float,
}
