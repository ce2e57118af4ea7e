"""OpenAPI fragment for campaigns (Qlara §6)."""

from __future__ import annotations

from typing import Any

from qlara_events.api import campaigns as views
from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ok as _ok
from qlara_events.api.openapi_parts import ref as _ref
from qlara_events.contacts import phones

#: Text PostgreSQL can store: anything but NUL.
NO_NUL = "^[^\\u0000]*$"
MODES = ["SMS", "RCS", "WHATSAPP", "RCS_SMS", "WHATSAPP_SMS", "WHATSAPP_RCS", "WHATSAPP_RCS_SMS"]


def schemas() -> dict[str, Any]:
    """Component schemas."""
    nstr = {"type": ["string", "null"]}
    ts = {"type": ["string", "null"], "format": "date-time"}
    editable: dict[str, Any] = {
        "name": {"type": "string"}, "description": nstr, "sendingMode": {"enum": MODES},
        "smsSender": nstr, "smsBody": {**nstr, "description": "{{firstName}}-style placeholders from contact fields"},
        "rcsAgentId": nstr, "rcsTemplateId": nstr, "whatsappPhoneNumberId": nstr, "whatsappTemplateId": nstr,
        "destinationType": {"enum": [1, 2], "description": "1 contactListIds, 2 destinations"},
        "contactListIds": {"type": "array", "items": {"type": "integer"}},
        "destinations": {"type": "array", "items": {"type": "string"}, "description": "E.164 numbers"},
        "scheduledDate": {**nstr, "description": "yyyy-MM-dd HH:mm:ss.SSSZ, e.g. 2026-05-04 08:30:00.000+0200"},
        "readyToSend": {"type": "boolean"},
    }
    # What a request may carry: the text fields also take an integer (stored as its decimal text, for clients
    # that send template ids as numbers).
    number = {"type": "integer", "minimum": -views.MAX_INT64 - 1, "maximum": views.MAX_INT64}
    text = {"anyOf": [{"type": "string", "maxLength": views.MAX_TEXT, "pattern": NO_NUL}, number]}
    nullable_text = {"anyOf": [*text["anyOf"], {"type": "null"}]}
    writable: dict[str, Any] = {
        **{k: {**nullable_text, **({"description": v["description"]} if "description" in v else {})}
           for k, v in editable.items() if v.get("type") == ["string", "null"] and k != "scheduledDate"},
        "name": {"anyOf": [{**text["anyOf"][0], "minLength": 1}, number]},
        "sendingMode": editable["sendingMode"],
        "destinationType": {**editable["destinationType"],
                            "description": "1 contactListIds, 2 destinations; default 1 when contactListIds is "
                                           "sent, else 2 when destinations is"},
        "contactListIds": {"type": "array", "maxItems": views.MAX_CONTACT_LISTS,
                           "items": {"type": "integer", "minimum": 1, "maximum": views.MAX_LIST_ID}},
        "destinations": {"type": "array", "maxItems": views.MAX_DESTINATIONS,
                         "items": {"type": "string", "pattern": phones.E164_PATTERN},
                         "description": "E.164 numbers libphonenumber can place (others are a 400)"},
        "scheduledDate": {"type": ["string", "null"], "pattern": views.SCHEDULE_PATTERN,
                          "description": editable["scheduledDate"]["description"] + " (years 1000 to 2999)"},
        "readyToSend": {"type": "boolean", "description": "true needs the sending mode's channel fields and a "
                                                          "non-empty recipient source (400 otherwise)"},
    }
    return {
        "CampaignCreate": {
            "type": "object", "required": ["name", "sendingMode"], "properties": writable,
            "anyOf": [{"required": ["destinationType"]}, {"required": ["contactListIds"]},
                      {"required": ["destinations"]}],
        },
        "CampaignUpdate": {"type": "object", "properties": writable,
                           "description": "Only the fields sent change"},
        "Campaign": {
            "type": "object", "required": ["id", "name", "sendingMode", "status"],
            "properties": {
                "id": {"type": "integer"}, **editable,
                "status": {"enum": [0, 1, 2, 3, 4], "description": "0 draft, 1 ready/scheduled, 2 sending, "
                                                                   "3 completed, 4 failed"},
                "statusName": {"type": "string"}, "totalDestinations": {"type": ["integer", "null"]},
                "totalSuccess": {"type": "integer"}, "totalFailed": {"type": "integer"},
                "price": {"type": ["number", "null"]}, "messagesCreated": {"type": "integer"},
                "failedReason": nstr, "createdAt": ts, "confirmedAt": ts, "startedAt": ts, "completedAt": ts,
            },
        },
        "CampaignPrice": {
            "type": "object", "required": ["id", "totalDestinations", "unitPrice", "price", "currency", "upToDate"],
            "properties": {"id": {"type": "integer"}, "totalDestinations": {"type": "integer"},
                           "unitPrice": {"type": "number"}, "price": {"type": "number"},
                           "currency": {"type": "string"}, "calculatedAt": ts,
                           "upToDate": {"type": "boolean", "description": "False once recipients or content changed"}},
        },
        "CampaignStats": {
            "type": "object",
            "properties": {k: {"type": "integer"} for k in ("id", "status", "sent", "delivered", "read", "failed",
                                                            "expired", "pending")}
            | {"totalDestinations": {"type": ["integer", "null"]}, "byStatus": {"type": "object"}},
        },
        "CampaignPeriodStats": {
            "type": "object", "required": ["period", "total"],
            "properties": {"period": {"type": "string"}} | {k: {"type": "integer"} for k in (
                "total", "delivered", "read", "failed", "expired", "pending")},
        },
    }


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    base = f"{p}/campaigns"
    tag = ["Campaigns"]
    auth = {"401": _error("API key missing, invalid or revoked"), "403": _error("Key restricted to other channels"),
            "429": _error("Rate limit exceeded")}
    cid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = _error("No such campaign in the account")
    create_body = {"required": True, "content": {JSON: {"schema": _ref("CampaignCreate")}}}
    update_body = {"required": True, "content": {JSON: {"schema": _ref("CampaignUpdate")}}}

    def q(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required, "schema": schema}

    return {
        base: {
            "post": {"operationId": "createCampaign", "tags": tag, "summary": "Create a draft (status 0)",
                     "requestBody": create_body,
                     "responses": {"201": _ok(_ref("Campaign"), "Created"),
                                   "400": _error("Missing or invalid fields, a destination libphonenumber cannot "
                                                 "place, or readyToSend on an incomplete campaign"), **auth}},
            "get": {"operationId": "listCampaigns", "tags": tag, "summary": "Campaigns, newest first",
                    "parameters": [q("status", {"type": "integer", "minimum": 0, "maximum": 4}),
                                   q("page", {"type": "integer", "minimum": 0, "maximum": 1_000_000}),
                                   q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
                    "responses": {"200": _ok({"type": "array", "items": _ref("Campaign")}),
                                  "400": _error("Invalid filter"), **auth}},
        },
        f"{base}/stats": {"get": {
            "operationId": "getCampaignsStats", "tags": tag,
            "summary": "Counts per time bucket, from counters maintained on every status change",
            "parameters": [q("startDate", {"type": "string", "format": "date"}, True),
                           q("endDate", {"type": "string", "format": "date"}, True),
                           q("aggregateOn", {"enum": ["hour", "day", "week", "month"]}),
                           q("sendingMode", {"enum": ["SMS", "RCS", "WHATSAPP"]}), q("isDraft", {"type": "boolean"}),
                           q("page", {"type": "integer", "minimum": 0}),
                           q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                           q("direction", {"enum": ["ASC", "DESC"]})],
            "responses": {"200": _ok({"type": "array", "items": _ref("CampaignPeriodStats")}),
                          "400": _error("Missing or invalid parameters"), **auth}}},
        f"{base}/{{id}}": {
            "get": {"operationId": "getCampaign", "tags": tag, "summary": "One campaign", "parameters": [cid],
                    "responses": {"200": _ok(_ref("Campaign")), **auth, "404": missing}},
            "put": {"operationId": "updateCampaign", "tags": tag, "summary": "Partial update (status 0 or 1 only)",
                    "parameters": [cid], "requestBody": update_body,
                    "responses": {"200": _ok(_ref("Campaign")), "400": _error("Invalid, or no longer editable"),
                                  **auth, "404": missing}},
            "delete": {"operationId": "deleteCampaign", "tags": tag, "summary": "Delete (status 0 or 1 only)",
                       "parameters": [cid],
                       "responses": {"204": {"description": "Deleted"}, **auth,
                                     "404": _error("Not found, or started (status 2, 3, 4)")}},
        },
        f"{base}/{{id}}/calculateGoal": {"post": {
            "operationId": "calculateCampaignGoal", "tags": tag, "summary": "Count recipients and price the campaign",
            "parameters": [cid],
            "responses": {"200": _ok(_ref("CampaignPrice")), "400": _error("Incomplete campaign or unknown lists"),
                          **auth, "404": missing}}},
        f"{base}/{{id}}/price": {"get": {
            "operationId": "getCampaignPrice", "tags": tag, "summary": "The last calculateGoal result",
            "parameters": [cid],
            "responses": {"200": _ok(_ref("CampaignPrice")), "400": _error("calculateGoal not run"), **auth,
                          "404": missing}}},
        f"{base}/{{id}}/confirm": {"put": {
            "operationId": "confirmCampaign", "tags": tag,
            "summary": "Reserve the credit and queue the campaign (irreversible); sends now or at scheduledDate",
            "parameters": [cid],
            "responses": {"202": _ok(_ref("Campaign"), "Accepted"),
                          "400": _error("Invalid, not ready, cost not calculated, or insufficient credit"), **auth,
                          "404": missing}}},
        f"{base}/{{id}}/stats": {"get": {
            "operationId": "getCampaignStats", "tags": tag, "summary": "Totals of one campaign",
            "parameters": [cid], "responses": {"200": _ok(_ref("CampaignStats")), **auth, "404": missing}}},
    }
