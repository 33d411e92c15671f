"""Draw JSON values valid under a pydantic-exported JSON Schema (the subset pydantic emits).

hypothesis-jsonschema no longer works with current Hypothesis, and this subset is small:
objects, arrays, tuples (prefixItems), enums, consts, anyOf/oneOf, $ref, numeric bounds,
string lengths and patterns.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    return _strategy(schema, schema.get("$defs", {}))


def _strategy(s: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in s:
        return st.deferred(lambda: _strategy(defs[s["$ref"].rsplit("/", 1)[1]], defs))
    if "const" in s:
        return st.just(s["const"])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    for key in ("anyOf", "oneOf"):
        if key in s:
            return st.one_of([_strategy(sub, defs) for sub in s[key]])
    kind = s.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(s.get("minimum", -(2**31)), s.get("maximum", 2**31))
    if kind == "number":
        low = s.get("minimum", s.get("exclusiveMinimum"))
        return st.floats(
            min_value=low,
            max_value=s.get("maximum"),
            exclude_min="exclusiveMinimum" in s,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        if "pattern" in s:
            return st.from_regex(s["pattern"], fullmatch=True)
        return st.text(min_size=s.get("minLength", 0), max_size=min(s.get("maxLength", 12), 12))
    if kind == "array":
        if "prefixItems" in s:
            return st.tuples(*[_strategy(i, defs) for i in s["prefixItems"]]).map(list)
        return st.lists(
            _strategy(s.get("items", {}), defs), min_size=s.get("minItems", 0), max_size=3
        )
    if kind == "object":
        if "properties" not in s:
            values = (
                _strategy(s["additionalProperties"], defs)
                if isinstance(s.get("additionalProperties"), dict)
                else st.integers() | st.text(max_size=4)
            )
            keys = (
                _strategy(s["propertyNames"], defs) if "propertyNames" in s else st.text(max_size=6)
            )
            return st.dictionaries(keys, values, max_size=3)
        required = set(s.get("required", []))
        props = s["properties"]
        return st.fixed_dictionaries(
            {k: _strategy(v, defs) for k, v in props.items() if k in required},
            optional={k: _strategy(v, defs) for k, v in props.items() if k not in required},
        )
    return st.none() | st.integers() | st.text(max_size=4)
