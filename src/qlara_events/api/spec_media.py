"""OpenAPI fragment for media (Qlara §9) and signed downloads."""

from __future__ import annotations

from typing import Any

from qlara_events.api import media as views
from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ref as _ref

#: Text PostgreSQL can store: anything but NUL.
NO_NUL = "^[^\\u0000]*$"


def schemas() -> dict[str, Any]:
    """Component schemas."""
    return {"Media": {
        "type": "object", "required": ["id", "name", "mimeType", "size", "createdAt", "url", "urlExpiresAt"],
        "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": ["string", "null"]},
            "folderId": {"type": ["integer", "null"]},
            "mimeType": {"type": "string", "enum": ["image/jpeg", "image/png", "image/gif", "video/mp4"],
                         "description": "Detected from the file's bytes"},
            "size": {"type": "integer"}, "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]}, "sha256": {"type": "string"},
            "createdAt": {"type": "string", "format": "date-time"},
            "url": {"type": "string", "description": "Signed download URL (no API key needed) until urlExpiresAt"},
            "urlExpiresAt": {"type": "string", "format": "date-time"},
        },
    }}


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    auth = {"401": _error("API key missing, invalid or revoked"), "429": _error("Rate limit exceeded")}
    mid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = _error("No such media item in the account")
    return {
        f"{p}/media": {
            "post": {"operationId": "uploadMedia", "tags": ["Media"],
                     "summary": "Upload a JPEG, PNG, GIF (≤ 5 MB) or MP4 (≤ 100 MB), streamed to storage",
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                         "type": "object", "required": ["file"],
                         "properties": {
                             "file": {"type": "string", "format": "binary",
                                      "description": "Its bytes decide the type; a declared part Content-Type "
                                                     "must agree with them"},
                             "name": {"type": "string", "maxLength": views.MAX_FIELD, "pattern": NO_NUL,
                                      "description": "Default: the file part's filename"},
                             "description": {"type": "string", "maxLength": views.MAX_FIELD, "pattern": NO_NUL},
                             "folderId": {"type": "integer", "minimum": 1, "maximum": views.MAX_FOLDER_ID}}}}}},
                     "responses": {"201": {"description": "Created", "content": {JSON: {"schema": _ref("Media")}}},
                                   "400": _error("Missing file, unsupported or mislabelled type, bad field"),
                                   **auth, "413": _error("Over the size limit of the file's type")}},
            "get": {"operationId": "listMedia", "tags": ["Media"], "summary": "The account's media",
                    "parameters": [
                        {"name": "page", "in": "query",
                         "schema": {"type": "integer", "minimum": 0, "maximum": views.MAX_PAGE}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "sortBy", "in": "query", "schema": {"enum": ["id", "name", "createdAt", "size"]}},
                        {"name": "sortOrder", "in": "query", "schema": {"enum": ["asc", "desc"]}}],
                    "responses": {"200": {"description": "OK", "content": {
                        JSON: {"schema": {"type": "array", "items": _ref("Media")}}}},
                        "400": _error("Invalid paging or sorting"), **auth}},
        },
        f"{p}/media/{{id}}": {
            "get": {"operationId": "getMedia", "tags": ["Media"], "summary": "One media item",
                    "parameters": [mid], "responses": {"200": {"description": "OK", "content": {
                        JSON: {"schema": _ref("Media")}}}, **auth, "404": missing}},
            "delete": {"operationId": "deleteMedia", "tags": ["Media"],
                       "summary": "Delete (irreversible; its URLs stop working)", "parameters": [mid],
                       "responses": {"204": {"description": "Deleted"}, **auth, "404": missing}},
        },
        "/files/media/{key}": {"get": {
            "operationId": "downloadMedia", "tags": ["Media"], "security": [],
            "summary": "Signed, expiring download of a media file (the url field of a media item)",
            "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                           {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file", "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
                "401": _error("Missing, invalid or expired signature"), "404": _error("File deleted")}}},
    }
