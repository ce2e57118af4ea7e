"""OpenAPI fragment for social profiles (Qlara §11)."""

from __future__ import annotations

from typing import Any

from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error


def schemas() -> dict[str, Any]:
    """Component schemas."""
    ts = {"type": ["string", "null"], "format": "date-time"}
    return {"SocialProfile": {
        "type": "object", "required": ["platform", "profileId", "disconnected", "status", "linkedPagesCount"],
        "properties": {
            "platform": {"type": "string"}, "profileId": {"type": "string"},
            "username": {"type": ["string", "null"]}, "profileName": {"type": ["string", "null"]},
            "profilePictureUrl": {"type": ["string", "null"]}, "phoneNumber": {"type": ["string", "null"]},
            "connectedAt": ts, "tokenExpiresAt": ts,
            "disconnected": {"type": "boolean", "description": "The OAuth token expired or was revoked: "
                                                              "reconnect in the dashboard"},
            "status": {"enum": ["CONNECTED", "TOKEN_EXPIRED", "TOKEN_REVOKED"]},
            "linkedPagesCount": {"type": "integer"},
            "pages": {"type": "array", "items": {"type": "object"}},
        },
    }}


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    auth = {"401": _error("API key missing, invalid or revoked"), "429": _error("Rate limit exceeded")}
    items = {"description": "OK", "content": {JSON: {"schema": {
        "type": "array", "items": {"$ref": "#/components/schemas/SocialProfile"}}}}}
    return {
        f"{p}/socials": {"get": {"operationId": "listSocialProfiles", "tags": ["Social profiles"],
                                 "summary": "Connected profiles (connections are made by OAuth in the dashboard)",
                                 "responses": {"200": items, **auth}}},
        f"{p}/socials/{{platform}}": {"get": {
            "operationId": "getSocialProfiles", "tags": ["Social profiles"],
            "summary": "Full details of the platform's connected profiles, linked pages included",
            "parameters": [{"name": "platform", "in": "path", "required": True, "schema": {
                "type": "string", "enum": ["facebook", "instagram", "linkedin", "google", "tiktok", "whatsapp"]}}],
            "responses": {"200": items, "400": _error("Unknown platform"), **auth,
                          "404": _error("Nothing connected on this platform")}}},
    }
