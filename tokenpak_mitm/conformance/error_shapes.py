"""Invariant I9: error bodies and error events match the provider's own schema.

The schemas (``tokenpak_mitm/conformance/schemas/*.json``) are data, not code, so they can be read and
reviewed next to the provider docs, and a conformance checker can tell "the provider changed
its error shape" apart from "our tracker misread it". They allow additional properties because
providers add fields over time; what they pin down is what our trackers rely on.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["check_error_shape", "DIALECT_SCHEMAS"]

# dialect -> (schema for bodies / chunks, schema for ``event: error`` payloads or None)
DIALECT_SCHEMAS: dict[str, tuple[str, str | None]] = {
    "anthropic": ("anthropic_error.json", None),
    "openai_chat": ("openai_error.json", None),
    "openai_responses": ("openai_error.json", "openai_responses_error_event.json"),
    "gemini": ("gemini_error.json", None),
}


def check_error_shape(dialect: str, obj: dict[str, Any] | list[Any]) -> list[str]:
    """Violations of the dialect's error schema; empty when ``obj`` conforms.

    For ``openai_responses`` an object whose ``type`` is ``"error"`` is checked as a stream event,
    anything else as an HTTP error body. For ``gemini`` a list (the streamed JSON-array form of
    an error) has each element checked. Raises ``ValueError`` for an unknown dialect: that is a
    caller bug, not a provider one.
    """
    if dialect not in DIALECT_SCHEMAS:
        raise ValueError(f"no error schema for dialect {dialect!r}")
    body_schema, event_schema = DIALECT_SCHEMAS[dialect]
    if isinstance(obj, list) and dialect == "gemini":
        if not obj:
            return ["<root>: empty array is not an error body"]
        return [v for item in obj for v in check_error_shape(dialect, item)]
    name = event_schema if event_schema and isinstance(obj, dict) and obj.get("type") == "error" else body_schema
    errors = sorted(_validator(name).iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


@cache
def _validator(name: str) -> Draft202012Validator:
    text = resources.files("tokenpak_mitm.conformance").joinpath("schemas", name).read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)
