"""The free-form JSON rule (system_under_test.common.types.check_json): every
JSON a service accepts is one it can store in jsonb and render back."""

from __future__ import annotations

import json

import orjson
import pytest
from pydantic import ValidationError

from system_under_test.common.types import (FLOAT_EXACT, INT64_MAX, INT64_MIN, MAX_JSON_BYTES,
                                            MAX_JSON_DEPTH, MAX_JSON_MEMBERS, JsonObject, Model,
                                            check_json)


class Holder(Model):
    data: JsonObject


def nested(depth: int):
    v: object = 1
    for _ in range(depth):
        v = [v]
    return {"k": v}


@pytest.mark.parametrize("raw, why", [
    ('{"x": 1e20}', "below 2**53"),                         # jsonb prints it back as a >64-bit int
    ('{"x": 9007199254740992.0}', "below 2**53"),
    ('{"x": -1.5e300}', "below 2**53"),
    ('{"x": 123456789012345678901234567890}', "64-bit"),
    ('{"x": 9223372036854775808}', "64-bit"),
    ('{"x": -9223372036854775809}', "64-bit"),
    ('{"x": NaN}', "finite"),
    ('{"x": Infinity}', "finite"),
    ('{"x": -Infinity}', "finite"),
    ('{"x": 1e400}', "finite"),                              # json.loads makes it inf
    ('{"x": "\\ud800"}', "surrogate"),
    ('{"\\udfff": 1}', "surrogate"),
    ('{"a": {"b": ["\\ud800"]}}', "surrogate"),
    ('{"x": "nul\\u0000"}', "NUL"),
    ('{"nul\\u0000": 1}', "NUL"),
])
def test_unstorable_json_is_refused_naming_the_member(raw, why):
    with pytest.raises(ValidationError) as e:
        Holder.model_validate({"data": json.loads(raw)})
    (err,) = e.value.errors()
    assert err["loc"] == ("data",) and why in err["msg"], err
    assert err["type"] == "value_error"            # a 422, never the TypeError that was a 500


def test_the_member_is_named_by_its_path():
    with pytest.raises(ValueError, match=r"^a\.b\[1\]: integer outside"):
        check_json({"a": {"b": [0, 2 ** 64]}})


@pytest.mark.parametrize("value", [
    {"x": INT64_MAX, "y": INT64_MIN, "z": 0},
    {"x": FLOAT_EXACT - 1.0, "y": -(FLOAT_EXACT - 1.0), "w": 1e-300, "v": 5e-324, "u": 0.1},
    {"s": "ünïcødé ✓ 𝄞", "t": "", "b": True, "n": None, "l": [], "o": {}},
    nested(MAX_JSON_DEPTH - 1),
])
def test_storable_json_is_kept_and_renders(value):
    assert Holder.model_validate({"data": value}).data == value
    assert orjson.loads(orjson.dumps(value)) == value


def test_size_depth_and_members_are_bounded():
    with pytest.raises(ValueError, match="deeper"):
        check_json(nested(MAX_JSON_DEPTH))
    with pytest.raises(ValueError, match="larger"):
        check_json({"x": "y" * MAX_JSON_BYTES})
    with pytest.raises(ValueError, match="members"):
        check_json({"x": [0] * MAX_JSON_MEMBERS})
    deep = {"k": []}
    cur = deep["k"]
    for _ in range(100_000):           # far past the recursion limit: refused, not a RecursionError
        cur.append([])
        cur = cur[0]
    with pytest.raises(ValueError, match="deeper"):
        check_json(deep)


def test_non_json_values_are_refused_with_value_error():
    with pytest.raises(ValueError, match="not a JSON value"):
        check_json({"x": object()})
    with pytest.raises(ValueError, match="keys must be strings"):
        check_json({1: 2})
