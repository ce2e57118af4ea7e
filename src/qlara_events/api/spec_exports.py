"""OpenAPI fragment for message history and exports (Qlara §7)."""

from __future__ import annotations

from typing import Any

from qlara_events.api import exports as views
from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ok as _ok
from qlara_events.api.openapi_parts import ref as _ref

#: Text PostgreSQL (and its jsonb) can store: anything but NUL.
NO_NUL = "^[^\\u0000]*$"
_FILTER = {"type": "string", "minLength": 1, "maxLength": views.MAX_FILTER, "pattern": NO_NUL}
#: A campaign id as the upstream senders give it: a number or text.
_CAMPAIGN_ID = {"anyOf": [{"type": "integer", "minimum": views.MIN_INT64, "maximum": views.MAX_INT64}, _FILTER]}
#: Contact or list ids of a contacts export.
_IDS = {"type": "array", "minItems": 1, "maxItems": views.MAX_EXPORT_IDS,
        "items": {"type": "integer", "minimum": 1, "maximum": views.MAX_CONTACT_ID}}


def schemas() -> dict[str, Any]:
    """Component schemas."""
    ts = {"type": ["string", "null"], "format": "date-time"}
    window = {"startDateTime": {"type": "string", "format": "date-time", "description": "With offset"},
              "endDateTime": {"type": "string", "format": "date-time", "description": "With offset"}}
    return {
        "ExportJob": {
            "type": "object", "required": ["id", "kind", "status", "isAvailableForDownload", "createdAt"],
            "properties": {
                "id": {"type": "integer"},
                "kind": {"enum": ["MESSAGE_HISTORY", "DELIVERY_REPORTS", "CONTACTS"]},
                "status": {"enum": ["PENDING", "COMPLETED", "FAILED", "EXPIRED"]},
                "isAvailableForDownload": {"type": "boolean"},
                "rowCount": {"type": ["integer", "null"]}, "size": {"type": ["integer", "null"]},
                "error": {"type": ["string", "null"]}, "parameters": {"type": "object"},
                "createdAt": ts, "startedAt": ts, "completedAt": ts,
                "expiresAt": {**ts, "description": "The file is deleted then; regenerate with POST"},
            },
        },
        "ExportLink": {
            "type": "object", "required": ["id", "url", "urlExpiresAt"],
            "properties": {"id": {"type": "integer"}, "url": {"type": "string"}, "urlExpiresAt": ts,
                           "rowCount": {"type": ["integer", "null"]}, "size": {"type": ["integer", "null"]}},
        },
        "HistoryExportRequest": {
            "type": "object", "required": ["startDateTime", "endDateTime"], "additionalProperties": False,
            "description": "The window and optional filters (those of GET /messages/history among them); "
                           "unknown fields are a 400.",
            "properties": {**window, "sender": _FILTER, "destination": _FILTER,
                           "campaignId": {**_CAMPAIGN_ID,
                                          "description": "That campaign's messages instead of API-sent ones"},
                           "channel": {**_ref("Channel"), "description": "Only this channel's messages "
                                       "(every channel the key may use when absent)"},
                           "status": {**_ref("DeliveryStatus"), "description": "Only messages in this status"}},
        },
        "ContactsExportRequest": {
            "type": "object", "additionalProperties": False,
            "description": "listIds, or contactIds, or neither for every contact of the account (not both). "
                           "Ids of other accounts match nothing. Unknown fields are a 400.",
            "not": {"required": list(views.CONTACT_FILTERS)},
            "properties": {"listIds": {**_IDS, "description": "Members of any of these lists (each contact once)"},
                           "contactIds": {**_IDS, "description": "These contacts"}},
        },
        "DeliveryReportsExportRequest": {
            "type": "object",
            "description": "campaignId, or startDateTime and endDateTime; with a campaignId the window is not "
                           "applied (a window field that is sent must still be valid)",
            "anyOf": [{"required": ["campaignId"]}, {"required": ["startDateTime", "endDateTime"]}],
            "properties": {"campaignId": _CAMPAIGN_ID, **window},
        },
    }


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    auth = {"401": _error("API key missing, invalid or revoked"), "429": _error("Rate limit exceeded")}
    tag = ["History and exports"]
    eid = {"name": "exportId", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = _error("No such export in the account")

    def q(name: str, schema: dict[str, Any], required: bool = False, description: str = "") -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}

    return {
        f"{p}/messages/history": {"get": {
            "operationId": "getMessageHistory", "tags": tag,
            "summary": "One channel's messages submitted in [from, to], oldest first; a plain array",
            "parameters": [q("channel", _ref("Channel"), True),
                           q("from", {"type": "string", "format": "date-time"}, True, "With offset"),
                           q("to", {"type": "string", "format": "date-time"}, True,
                             "With offset; from > to gives []"),
                           q("status", _ref("DeliveryStatus")),
                           q("page", {"type": "integer", "minimum": 0, "maximum": 10_000_000}),
                           q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, description="Default 20")],
            "responses": {"200": _ok({"type": "array", "items": _ref("DeliveryStatusResponse")}),
                          "400": _error("channel, from or to missing or invalid"),
                          "403": _error("Key restricted to other channels"), **auth}}},
        f"{p}/messages/history/export": {"post": {
            "operationId": "exportMessageHistory", "tags": tag,
            "summary": "CSV of API-originated messages (all channels) in a window; a background job",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("HistoryExportRequest")}}},
            "responses": {"202": _ok(_ref("ExportJob"), "Queued"),
                          "400": _error("Missing or invalid dates, invalid filters, or unknown fields"), **auth}}},
        f"{p}/exports/delivery-reports": {"post": {
            "operationId": "exportDeliveryReports", "tags": tag,
            "summary": "CSV of every delivery receipt of a campaign or a window; a background job",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("DeliveryReportsExportRequest")}}},
            "responses": {"202": _ok(_ref("ExportJob"), "Queued"),
                          "400": _error("Neither campaignId nor a window, or bad dates"), **auth}}},
        f"{p}/exports/contacts": {"post": {
            "operationId": "exportContacts", "tags": tag,
            "summary": "CSV of the account's contacts (all, some lists' members or some ids), by id; a background job",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ContactsExportRequest")}}},
            "responses": {"202": _ok(_ref("ExportJob"), "Queued"),
                          "400": _error("Malformed ids, empty arrays, both listIds and contactIds, or unknown "
                                        "fields"), **auth}}},
        f"{p}/exports": {"get": {
            "operationId": "listExports", "tags": tag, "summary": "Export jobs, newest first",
            "parameters": [q("page", {"type": "integer", "minimum": 0, "maximum": 1_000_000}),
                           q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
            "responses": {"200": _ok({"type": "array", "items": _ref("ExportJob")}),
                          "400": _error("Invalid paging"), **auth}}},
        f"{p}/exports/{{exportId}}": {
            "get": {"operationId": "getExportLink", "tags": tag,
                    "summary": "A signed, time-limited download URL", "parameters": [eid],
                    "responses": {"200": _ok(_ref("ExportLink")), "400": _error("Expired: regenerate it"), **auth,
                                  "404": missing, "409": _error("Still being generated, or failed")}},
            "post": {"operationId": "regenerateExport", "tags": tag, "summary": "Generate a finished export again",
                     "parameters": [eid],
                     "responses": {"202": _ok(_ref("ExportJob"), "Queued"), **auth, "404": missing,
                                   "409": _error("Already being generated")}},
        },
        "/files/exports/{key}": {"get": {
            "operationId": "downloadExport", "tags": tag, "security": [],
            "summary": "The CSV behind a signed link from GET /exports/{exportId}",
            "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                           q("expires", {"type": "integer"}, True), q("signature", {"type": "string"}, True)],
            "responses": {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                          "401": _error("Missing, invalid or expired signature"),
                          "404": _error("Export expired or regenerated")}}},
    }
