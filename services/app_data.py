"""A notification's app data (`Content.data`) to and from JSON, keeping integers integers.

`Content.data` is a `google.protobuf.Struct`, whose numbers are all doubles on the wire: `{"k": 1}`
arrives as `1.0`, and an integer beyond 2**53 would arrive rounded. The proto has no other
encoding of arbitrary JSON, so the data is kept as sent this way:

- on the way in (`data_from_json`), the data must be a JSON object; an integer a double cannot
  hold exactly (beyond +-2**53), NaN and the infinities are refused rather than altered;
- on the way out (`data_to_json`), a number with no fractional part is an integer again.

The one ambiguity left: a whole float sent as `1.0` comes back as `1` (JSON readers treat the
two alike; send a string where the difference matters).
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import json_format, struct_pb2

# Integers up to this magnitude are exact as doubles.
MAX_EXACT_INT = 2**53


class DataError(ValueError):
    """The data cannot be carried as sent; the message says why and where."""


def data_from_json(text: str) -> struct_pb2.Struct:
    """The Struct for a JSON object given as text.

    Raises:
        DataError: not JSON, not an object, or a number a double cannot carry exactly.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise DataError(f"data is not valid JSON: {exc.msg} at character {exc.pos}") from None
    return data_from_value(value)


def data_from_value(value: Any) -> struct_pb2.Struct:
    """The Struct for a decoded JSON object (see `data_from_json`)."""
    if not isinstance(value, dict):
        raise DataError(
            f"data must be a JSON object, e.g. '{{\"order\": 7}}'; got {_json_kind(value)}"
        )
    _check(value, "data")
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def data_to_json(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The data as a JSON object, whole numbers as integers."""
    value = json_format.MessageToDict(struct)
    return {key: _restore(item) for key, item in value.items()}


def restore_notification_json(notification: dict[str, Any]) -> dict[str, Any]:
    """A notification from `json_format.MessageToDict` with its app data's whole numbers as
    integers again (in place; returned for convenience)."""
    content = notification.get("content")
    if isinstance(content, dict) and isinstance(content.get("data"), dict):
        content["data"] = {key: _restore(item) for key, item in content["data"].items()}
    return notification


def _restore(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {key: _restore(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore(item) for item in value]
    return value


def _check(value: Any, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise DataError(
                f"{where} is {value}, beyond what a JSON number carries exactly here (+-2**53): "
                "send it as a string"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"{where} is not a finite number")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check(item, f"{where}.{key}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise DataError(f"{where} is not a JSON value")  # pragma: no cover - json.loads types


def _refuse_constant(name: str) -> Any:
    raise DataError(f"data is not valid JSON: {name} is not a JSON number")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
