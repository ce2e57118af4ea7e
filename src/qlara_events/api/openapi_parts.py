"""Small builders shared by the OpenAPI fragments (api/spec.py and api/spec_*.py)."""

from __future__ import annotations

from typing import Any, Final

JSON: Final = "application/json"


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def error(description: str) -> dict[str, Any]:
    """A response with the JSON error body."""
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """A JSON response with ``schema``."""
    return {"description": description, "content": {JSON: {"schema": schema}}}
