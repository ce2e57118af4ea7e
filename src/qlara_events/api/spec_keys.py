"""OpenAPI fragment for API keys and the rate-limit contract shared by every Platform API response."""

from __future__ import annotations

from typing import Any

from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ref as _ref


def schemas() -> dict[str, Any]:
    """Component schemas."""
    key: dict[str, Any] = {
        "type": "object", "required": ["id", "prefix", "userId", "username", "trafficType", "status", "createdAt"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": ["string", "null"]},
            "description": {"type": ["string", "null"]},
            "prefix": {"type": "string", "description": "The key's first characters, to recognise it"},
            "operations": {"type": ["array", "null"], "items": _ref("Channel"),
                           "description": "Channels the key may use; null = all"},
            "userId": {"type": ["integer", "null"], "description": "The key's owner, a user of the account"},
            "username": {"type": ["string", "null"], "description": "The owner's name"},
            "trafficType": {"enum": ["PRODUCTION", "TRIAL"],
                            "description": "The rate-limit plan the key's requests are counted under"},
            "status": {"const": "ACTIVE"}, "createdAt": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "ApiKey": key,
        "NewApiKey": {**key, "required": [*key["required"], "apiKey"],
                      "properties": {**key["properties"],
                                     "apiKey": {"type": "string", "description": "Shown once, never again"}}},
        "ApiKeyRequest": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 200},
                           "description": {"type": "string", "maxLength": 1000},
                           "operations": {"type": "array", "minItems": 1, "items": _ref("Channel")},
                           "userId": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**63 - 1,
                                      "description": "The key's owner: a user of the account"}},
        },
    }


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    auth = {"401": _error("API key missing, invalid or revoked"), "429": _error("Rate limit exceeded")}
    manage = {**auth, "403": _error("The key is restricted to some channels: managing keys needs an unrestricted "
                                    "key")}
    value = {"name": "value", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "GET: the raw key value; DELETE: the key id"}
    return {
        f"{p}/authentication": {
            "get": {"operationId": "listApiKeys", "tags": ["API keys"], "summary": "The account's keys (no values)",
                    "parameters": [{"name": "userId", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                                    "description": "Only the keys this user owns"}],
                    "responses": {"200": {"description": "OK", "content": {
                        JSON: {"schema": {"type": "array", "items": _ref("ApiKey")}}}},
                        "400": _error("userId is not an integer"), **manage}},
            "post": {"operationId": "createApiKey", "tags": ["API keys"],
                     "summary": "Create a key, active at once; its value is returned only here",
                     "description": "A key restricted to some channels may create keys only within its own "
                                    "channels (without operations the new key gets the caller's).",
                     "requestBody": {"content": {JSON: {"schema": _ref("ApiKeyRequest")}}},
                     "responses": {"201": {"description": "Created", "content": {
                         JSON: {"schema": _ref("NewApiKey")}}},
                         "400": _error("Invalid body"), "404": _error("userId is not a user of the account"),
                         **auth,
                         "403": _error("operations not within the caller's channels"),
                         "409": _error("The account has the maximum number of active keys "
                                       "(QLARA_API_KEYS_PER_ACCOUNT)")}},
        },
        f"{p}/authentication/{{value}}": {
            "get": {"operationId": "getApiKeyByValue", "tags": ["API keys"], "summary": "Look a key up by its value",
                    "parameters": [value],
                    "responses": {"200": {"description": "OK", "content": {JSON: {"schema": _ref("ApiKey")}}},
                                  **manage, "404": _error("No such key in the account")}},
            "delete": {"operationId": "revokeApiKey", "tags": ["API keys"],
                       "summary": "Revoke a key now (the next request with it is a 401)", "parameters": [value],
                       "responses": {"204": {"description": "Revoked"}, **manage,
                                     "404": _error("No such key in the account")}},
        },
    }


RATE_LIMIT_NOTE = (
    " Every authenticated response carries X-RateLimit-Limit (requests per minute of the key's plan), "
    "X-RateLimit-Remaining and X-RateLimit-Reset (Unix seconds when the minute window ends); past the limit "
    "(1,000/min with 50/s bursts by default) the answer is 429 with Retry-After and "
    "{status, error, message, retryAfter}. An account with an IP allow-list (operators set it: "
    "qlara-events accounts allow-ip) answers 403 with the JSON error body to its keys from any other address, "
    "before the rate limit."
)
