"""The OpenAPI 3.1 document of everything this service serves; a test keeps it equal to the routes.

Built in Python so shared pieces (the error body, the status enum, the statusCode table) are written
once and match the code that produces them.
"""

from __future__ import annotations

from typing import Any, Final

from qlara_events import __version__
from qlara_events.api import (
    spec_campaigns,
    spec_contacts,
    spec_exports,
    spec_inbox,
    spec_keys,
    spec_media,
    spec_socials,
)
from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ok as _ok
from qlara_events.api.openapi_parts import ref as _ref
from qlara_events.api.params import MAX_OFFSET
from qlara_events.domain.status import STATUS_CODES, Channel, DeliveryStatus

_CHANNEL_QUERY = {
    "name": "channel", "in": "query", "required": True,
    "description": "The channel the message was sent on; a message on another channel is a 404.",
    "schema": _ref("Channel"),
}
_AUTH_ERRORS = {"401": _error("API key missing, invalid or revoked"),
                "403": _error("The key is restricted to other channels"),
                "429": _error("Rate limit exceeded (Retry-After says when to retry)")}

_STATUS_CODE_TABLE = ", ".join(f"{code} = {status.value}" for status, code in
                               sorted(STATUS_CODES.items(), key=lambda kv: kv[1]))


def paged_operations(paths: dict[str, Any]) -> list[dict[str, Any]]:
    """The operations that take a ``page`` query parameter."""
    return [op for ops in paths.values() for op in ops.values()
            if any(q.get("name") == "page" and q.get("in") == "query" for q in op.get("parameters", []))]


def _document_page_depth(paths: dict[str, Any]) -> None:
    """Every paged list reads at most MAX_OFFSET rows deep: a rule across two parameters, so it is said in
    words on ``page`` and by the 400 it answers (a schema cannot bound a product)."""
    rule = (f"page * limit is at most {MAX_OFFSET:,} rows deep; beyond, 400: narrow the list with its filters "
            "or export it")
    for op in paged_operations(paths):
        for q in op["parameters"]:
            if q.get("name") == "page":
                q["description"] = f"{q['description']}. {rule}" if q.get("description") else rule
        op["responses"].setdefault("400", _error("Invalid parameters"))


def build() -> dict[str, Any]:
    """The OpenAPI document."""
    ts = {"type": ["string", "null"], "format": "date-time"}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object", "required": ["status", "error", "message"],
            "properties": {
                "status": {"type": "integer", "description": "HTTP status"},
                "error": {"type": "string", "description": "HTTP reason phrase"},
                "message": {"type": "string", "description": "What went wrong, for a person"},
                "retryAfter": {"type": "integer", "description": "Seconds to wait (429 and 503 only)"},
            },
        },
        "Channel": {"type": "string", "enum": [c.value for c in Channel]},
        "DeliveryStatus": {"type": "string", "enum": [s.value for s in DeliveryStatus]},
        "DeliveryStatusResponse": {
            "type": "object",
            "required": ["customerMessageId", "messageId", "channel", "destination", "deliveryStatus",
                         "deliveryStatusDescription", "statusCode", "sentAt", "deliveredAt", "readAt",
                         "updatedAt"],
            "properties": {
                "customerMessageId": {"type": "string"},
                "messageId": {"type": "string"},
                "channel": _ref("Channel"),
                "destination": {"type": "string"},
                "sender": {"type": ["string", "null"]},
                "campaignId": {"type": ["string", "null"]},
                "deliveryStatus": _ref("DeliveryStatus"),
                "deliveryStatusDescription": {"type": ["string", "null"]},
                "statusCode": {"type": "integer", "description": f"Numeric status: {_STATUS_CODE_TABLE}"},
                "parts": {"type": "integer", "minimum": 1},
                "failedAfterDelivery": {
                    "type": "boolean",
                    "description": "A failure receipt arrived after delivery; recorded, status kept",
                },
                "submittedAt": ts, "sentAt": ts, "deliveredAt": ts, "readAt": ts, "failedAt": ts,
                "updatedAt": ts,
                "error": {"type": "object", "properties": {"code": {"type": ["string", "null"]},
                                                           "message": {"type": ["string", "null"]}}},
            },
        },
        "TimelineEvent": {
            "type": "object", "required": ["eventId", "type", "effect", "via", "occurredAt", "receivedAt"],
            "properties": {
                "eventId": {"type": "string"},
                "type": {"type": "string", "enum": ["message.submitted", "message.status"]},
                "status": _ref("DeliveryStatus"),
                "rawStatus": {"type": "string", "description": "The provider's own status word"},
                "provider": {"type": "string"},
                "providerMessageId": {"type": "string"},
                "part": {"type": "integer"},
                "effect": {"type": "string", "enum": ["submitted", "applied", "superseded",
                                                      "failure_after_delivery", "orphaned"]},
                "via": {"type": "string", "description": "The endpoint that accepted the event"},
                "description": {"type": "string"},
                "error": {"type": "object"},
                "occurredAt": {"type": "string", "format": "date-time"},
                "receivedAt": {"type": "string", "format": "date-time"},
                "storedAt": {"type": "string", "format": "date-time"},
            },
        },
        "MessageTimeline": {
            "type": "object", "required": ["messageId", "customerMessageId", "channel", "deliveryStatus", "events"],
            "properties": {
                "messageId": {"type": "string"}, "customerMessageId": {"type": "string"},
                "channel": _ref("Channel"), "deliveryStatus": _ref("DeliveryStatus"),
                "events": {"type": "array", "items": _ref("TimelineEvent")},
            },
        },
    }
    schemas.update(_webhook_schemas(ts))
    p = "/partner-gateway/v1"
    by_message_id = {
        "name": "messageId", "in": "path", "required": True, "schema": {"type": "string"},
    }
    paths: dict[str, Any] = {
        f"{p}/messages/status/{{customerMessageId}}": {"get": {
            "operationId": "getMessageStatus", "tags": ["Delivery status"],
            "summary": "Status of one message by the partner's customerMessageId",
            "parameters": [{"name": "customerMessageId", "in": "path", "required": True,
                            "schema": {"type": "string"}}, _CHANNEL_QUERY],
            "responses": {"200": _ok(_ref("DeliveryStatusResponse")),
                          "400": _error("channel missing or invalid"), **_AUTH_ERRORS,
                          "404": _error("Unknown, on another channel, or in another account")},
        }},
        f"{p}/messages/status": {"get": {
            "operationId": "getMessageStatuses", "tags": ["Delivery status"],
            "summary": "Statuses of up to 500 messages of one channel; unknown ids are omitted",
            "parameters": [{"name": "ids", "in": "query", "required": True, "style": "form", "explode": False,
                            "description": "Comma-separated customerMessageIds (at most 500)",
                            # At least one id: a character that is neither a comma nor white space.
                            "schema": {"type": "string", "minLength": 1, "pattern": "[^,\\s]"}}, _CHANNEL_QUERY],
            "responses": {"200": _ok({"type": "array", "items": _ref("DeliveryStatusResponse")}),
                          "400": _error("ids or channel missing or invalid, or more than 500 ids"),
                          **_AUTH_ERRORS},
        }},
        f"{p}/rcs/messages/{{messageId}}/status": {"get": {
            "operationId": "getRcsMessageStatus", "tags": ["Delivery status"],
            "summary": "Status of an RCS message by platform messageId",
            "parameters": [by_message_id],
            "responses": {"200": _ok(_ref("DeliveryStatusResponse")), **_AUTH_ERRORS,
                          "404": _error("No RCS message with this id in the account")},
        }},
        f"{p}/whatsapp/messages/{{messageId}}/status": {"get": {
            "operationId": "getWhatsAppMessageStatus", "tags": ["Delivery status"],
            "summary": "Status of a WhatsApp message by platform messageId",
            "parameters": [by_message_id],
            "responses": {"200": _ok(_ref("DeliveryStatusResponse")), **_AUTH_ERRORS,
                          "404": _error("No WhatsApp message with this id in the account")},
        }},
        f"{p}/messages/{{messageId}}/events": {"get": {
            "operationId": "getMessageTimeline", "tags": ["Delivery status"],
            "summary": "Every event of a message (provider, raw status, time, effect), in time order",
            "parameters": [by_message_id],
            "responses": {"200": _ok(_ref("MessageTimeline")), **_AUTH_ERRORS,
                          "404": _error("No message with this id in the account")},
        }},
        "/ingest/v1/events": {"post": {
            "operationId": "ingestEvents", "tags": ["Ingest"], "security": [{"StandardWebhooks": []}],
            "summary": "Canonical events from the upstream senders (docs/events.md); 202 only after Kafka acked",
            "requestBody": {"required": True, "content": {
                JSON: {"schema": {"oneOf": [{"type": "object"}, {"type": "array", "maxItems": 1000}]}},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
            "responses": {
                "202": _ok({"type": "object", "required": ["accepted"],
                            "properties": {"accepted": {"type": "integer"}}}, "Every event acknowledged by Kafka"),
                "400": _error("Malformed body or an invalid event (kept in qlara.ingest-rejected)"),
                "401": _error("Missing or invalid Standard Webhooks signature"),
                "404": _error("Canonical ingest disabled (QLARA_INGEST_SECRET unset)"),
                "413": _error("Over 1 MiB or 1,000 events"),
                "503": _error("Kafka did not acknowledge, or this process is at QLARA_INGEST_MAX_IN_FLIGHT "
                              "requests in flight (answered at once); retry after Retry-After seconds"),
            },
        }},
        "/ingest/v1/providers/{provider}": {
            method: {
                "operationId": f"providerCallback{method.title()}", "tags": ["Ingest"], "security": [],
                "summary": "A provider's native callback, verified with the provider's own scheme "
                           "(docs/providers.md); GET serves handshakes and GET-style receipts",
                "parameters": [{"name": "provider", "in": "path", "required": True, "schema": {
                    "type": "string", "enum": ["twilio", "vonage", "infobip", "whatsapp", "rbm", "jasmin"]}}],
                "responses": {
                    "200": {"description": "Accepted (Jasmin: body ACK/Jasmin; handshakes: the challenge)",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "400": _error("Authenticated but unreadable (kept in qlara.ingest-rejected)"),
                    "401": _error("Signature or token invalid (counted, not stored)"),
                    "403": _error("Handshake with a wrong verify token"),
                    "404": _error("Provider not enabled (its secret is unset)"),
                    "413": _error("Body too large"),
                    "503": _error("Kafka did not acknowledge, or the process is at its limit of requests in "
                                  "flight; retry after Retry-After seconds"),
                },
            } for method in ("get", "post")
        },
        "/metrics": {"get": {"operationId": "metrics", "tags": ["Operations"], "security": [],
                             "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Prometheus text exposition",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/healthz": {"get": {"operationId": "healthz", "tags": ["Operations"], "security": [],
                             "summary": "Liveness", "responses": {"200": _ok({"type": "object"})}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["Operations"], "security": [],
                            "summary": "Readiness: Kafka and Postgres reachable",
                            "responses": {"200": _ok({"type": "object"}),
                                          "503": _ok({"type": "object"}, "A dependency is unavailable")}}},
        f"{p}/openapi.json": {"get": {
            "operationId": "getOpenApi", "tags": ["Meta"], "summary": "This document", "security": [],
            "responses": {"200": _ok({"type": "object"})},
        }},
    }
    paths.update(_webhook_paths(p))
    for fragment in (spec_keys, spec_inbox, spec_media, spec_socials, spec_exports, spec_campaigns,
                     spec_contacts):
        paths.update(fragment.paths(p))
        schemas.update(fragment.schemas())
    _document_page_depth(paths)
    _mark_extensions(paths, p)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Qlara Platform API (qlara-events)",
            "version": __version__,
            "description": "Delivery status, history and webhooks served by qlara-events. Errors always carry "
                           "the JSON body {status, error, message}. statusCode table: " + _STATUS_CODE_TABLE + "."
                           + spec_keys.RATE_LIMIT_NOTE,
        },
        "servers": [{"url": "/"}],
        "webhooks": _partner_webhooks(),
        "security": [{"ApiKey": []}, {"Basic": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "StandardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                                     "description": "Standard Webhooks HMAC-SHA256 with QLARA_INGEST_SECRET"},
                "Basic": {"type": "http", "scheme": "basic",
                          "description": "Any user name; the API key as the password"},
            },
        },
    }


#: The Qlara Platform API's own operations (../shared/reference/qlara-api.md, its 59 numbered endpoints; the RCS
#: and WhatsApp status reads, whose paths the reference does not show, at the paths chosen in docs/api.md).
#: Every other operation under the prefix is an extension of ours, marked ``x-qlara-extension: true``.
CONTRACT_OPERATIONS: Final = frozenset({
    "getMessageStatus", "getMessageStatuses", "getRcsMessageStatus", "getWhatsAppMessageStatus",
    "getWebhook", "createWebhook", "replaceWebhook", "deleteWebhook",
    "searchContacts", "createContact", "getContact", "updateContact", "deleteContacts", "uploadContacts",
    "uploadContactsVcard", "createContactList", "findContactLists", "deleteContactLists", "listContactsOfList",
    "addContactsToLists", "removeContactsFromLists", "deleteContactListMembership",
    "createCampaign", "getCampaign", "updateCampaign", "deleteCampaign", "calculateCampaignGoal",
    "getCampaignPrice", "confirmCampaign", "getCampaignsStats", "listCampaigns", "getCampaignStats",
    "getMessageHistory", "exportMessageHistory", "exportContacts", "exportDeliveryReports", "listExports",
    "getExportLink", "regenerateExport",
    "listConversations", "getConversation", "getConversationMessages", "replyToConversation",
    "markConversationRead", "archiveConversation", "unarchiveConversation", "assignConversation",
    "unassignConversation", "listAssignableUsers",
    "uploadMedia", "listMedia", "getMedia", "deleteMedia", "listSocialProfiles", "getSocialProfiles",
    "listApiKeys", "getApiKeyByValue", "createApiKey", "revokeApiKey",
})


def _mark_extensions(paths: dict[str, Any], prefix: str) -> None:
    for path, item in paths.items():
        if not path.startswith(prefix + "/"):
            continue
        for method, op in item.items():
            if method in _METHODS and op.get("operationId") not in CONTRACT_OPERATIONS:
                op["x-qlara-extension"] = True


_METHODS: Final = frozenset({"get", "put", "post", "delete", "patch"})


def _webhook_schemas(ts: dict[str, Any]) -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return {
        "WebhookRequest": {
            "type": "object", "required": ["callbackUrl"],
            "properties": {"callbackUrl": {"type": "string", "format": "uri",
                                           "description": "https:// URL; must not resolve to a private, loopback, "
                                                          "link-local, CGNAT, multicast or reserved address"}},
        },
        "Webhook": {
            "type": "object",
            "required": ["id", "callbackUrl", "status", "signingSecret", "createdAt"],
            "properties": {
                "id": {"type": "string"},
                "callbackUrl": {"type": "string"},
                "status": {"type": "string", "enum": ["ACTIVE", "DISABLED"]},
                "signingSecret": {"type": "string", "description": "whsec_ + base64 of 32 random bytes "
                                                                   "(Standard Webhooks)"},
                "previousSecretExpiresAt": {**ts, "description": "Until then attempts are signed with the "
                                                                 "previous secret too"},
                "failingSince": ts, "disabledAt": ts,
                "disabledReason": nullable_str,
                "createdAt": ts, "updatedAt": ts,
            },
        },
        "DeliveryAttempt": {
            "type": "object",
            "properties": {"attempt": {"type": "integer"}, "attemptedAt": {"type": "string"},
                           "statusCode": {"type": ["integer", "null"]}, "latencyMs": {"type": "integer"},
                           "error": nullable_str, "outcome": {"type": "string"}},
        },
        "Delivery": {
            "type": "object",
            "required": ["deliveryId", "eventType", "status", "attempts", "createdAt"],
            "properties": {
                "deliveryId": {"type": "string", "description": "The webhook-id header of every attempt"},
                "messageId": nullable_str,
                "eventType": {"type": "string", "enum": ["DELIVERY", "READ", "INBOUND"]},
                "status": {"type": "string", "enum": ["scheduled", "in_flight", "succeeded", "dead", "superseded"]},
                "attempts": {"type": "integer"},
                "createdAt": ts, "lastAttemptAt": ts, "nextAttemptAt": ts, "finishedAt": ts,
                "responseCode": {"type": ["integer", "null"]},
                "latencyMs": {"type": ["integer", "null"]},
                "error": nullable_str,
                "attemptLog": {"type": "array", "items": {"$ref": "#/components/schemas/DeliveryAttempt"}},
            },
        },
        "DeliveryPage": {
            "type": "object", "required": ["items", "nextCursor"],
            "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
                           "nextCursor": {**nullable_str, "description": "Pass as cursor for the next page"}},
        },
        "DeliveryEvent": {
            "type": "object",
            "required": ["eventType", "messageId", "channel", "timestamp", "deliveryStatus"],
            "properties": {
                "eventType": {"type": "string", "enum": ["DELIVERY", "READ"]},
                "messageId": {"type": "string"}, "customerMessageId": {"type": "string"},
                "destination": {"type": "string"}, "statusCode": {"type": "integer"},
                "description": {"type": "string"}, "channel": {"$ref": "#/components/schemas/Channel"},
                "timestamp": {"type": "string", "format": "date-time"},
                "deliveryStatus": {"$ref": "#/components/schemas/DeliveryStatus"},
                "error": {"type": "object"},
            },
        },
        "InboundEvent": {
            "type": "object",
            "required": ["eventType", "source", "destination", "text", "channel", "messageType", "timestamp"],
            "properties": {
                "eventType": {"const": "INBOUND"}, "messageId": {"type": "string"},
                "source": {"type": "string"}, "destination": {"type": "string"}, "text": {"type": "string"},
                "channel": {"$ref": "#/components/schemas/Channel"}, "messageType": {"type": "string"},
                "timestamp": {"type": "string", "format": "date-time"},
            },
        },
    }


def _webhook_paths(p: str) -> dict[str, Any]:
    base = f"{p}/webhooks/delivery-status"
    tag = ["Webhooks"]
    body = {"required": True, "content": {JSON: {"schema": _ref("WebhookRequest")}}}
    none = _error("No webhook configured for this account")
    bad_url = _error("callbackUrl missing, malformed, not HTTPS, on a port other than 443, 80 or one the operator "
                     "allows (QLARA_WEBHOOK_ALLOWED_PORTS), or its host not resolving to public addresses only")
    delivery_id = {"name": "deliveryId", "in": "path", "required": True, "schema": {"type": "string"}}
    # The webhook is account-wide (every channel's statuses, and its secret): a restricted key gets a 403.
    auth = {**_AUTH_ERRORS, "403": _error("The key is restricted to some channels: the webhook needs an "
                                           "unrestricted key")}
    window = {"type": "object", "required": ["since", "until"],
              "properties": {"since": {"type": "string", "format": "date-time"},
                             "until": {"type": "string", "format": "date-time"}}}
    return {
        base: {
            "post": {"operationId": "createWebhook", "tags": tag, "summary": "Register the delivery-status callback",
                     "requestBody": body,
                     "responses": {"201": _ok(_ref("Webhook"), "Created"), "400": bad_url, **auth,
                                   "409": _error("A webhook already exists (use PUT)")}},
            "get": {"operationId": "getWebhook", "tags": tag, "summary": "The configured callback and its secret",
                    "responses": {"200": _ok(_ref("Webhook")), **auth, "404": none}},
            "put": {"operationId": "replaceWebhook", "tags": tag,
                    "summary": "Replace the URL (re-enables a disabled webhook); never creates",
                    "requestBody": body,
                    "responses": {"200": _ok(_ref("Webhook")), "400": bad_url, **auth, "404": none}},
            "delete": {"operationId": "deleteWebhook", "tags": tag,
                       "summary": "Revoke the callback; queued deliveries are dropped",
                       "responses": {"204": {"description": "Deleted"}, **auth, "404": none}},
        },
        f"{base}/rotate-secret": {"post": {
            "operationId": "rotateWebhookSecret", "tags": tag,
            "summary": "New signing secret; the old one also signs for QLARA_WEBHOOK_ROTATION_OVERLAP (24 h)",
            "responses": {"200": _ok(_ref("Webhook")), **auth, "404": none}}},
        f"{base}/deliveries": {"get": {
            "operationId": "listDeliveries", "tags": tag,
            "summary": "Delivery log: attempts with time, response code, latency, error, next attempt",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string"},
                 "description": "Comma-separated: scheduled, in_flight, succeeded, dead, superseded"},
                {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                {"name": "messageId", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": _ok(_ref("DeliveryPage")), "400": _error("Invalid filter"), **auth,
                          "404": none}}},
        f"{base}/deliveries/recover": {"post": {
            "operationId": "recoverDeliveries", "tags": tag,
            "summary": "Reschedule every failed or dead delivery created in [since, until)",
            "requestBody": {"required": True, "content": {JSON: {"schema": window}}},
            "responses": {"202": _ok({"type": "object", "properties": {"scheduled": {"type": "integer"}}}),
                          "400": _error("since/until missing or invalid"), **auth, "404": none}}},
        f"{base}/deliveries/{{deliveryId}}/retry": {"post": {
            "operationId": "retryDelivery", "tags": tag, "summary": "Attempt one delivery again now",
            "parameters": [delivery_id],
            "responses": {"202": _ok({"type": "object"}), **auth,
                          "404": _error("No such delivery, or it is being attempted")}}},
    }


def _partner_webhooks() -> dict[str, Any]:
    """What partners receive (OpenAPI 3.1 ``webhooks``), signed with Standard Webhooks headers."""
    headers = {
        "webhook-id": {"schema": {"type": "string"}, "description": "Stable across retries: deduplicate on it"},
        "webhook-timestamp": {"schema": {"type": "integer"}, "description": "Unix seconds of this attempt"},
        "webhook-signature": {"schema": {"type": "string"},
                              "description": "v1,<base64 HMAC-SHA256 of id.timestamp.body>; two during rotation"},
    }
    params = [{"name": k, "in": "header", "required": True, **v} for k, v in headers.items()]

    def hook(summary: str, schema: str) -> dict[str, Any]:
        return {"post": {
            "summary": summary, "parameters": params,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(schema)}}},
            "responses": {"2XX": {"description": "Acknowledged; anything else (3xx included) is retried; "
                                                 "410 disables the webhook"}},
        }}

    return {
        "deliveryStatus": hook("A message's status changed (eventType DELIVERY or READ)", "DeliveryEvent"),
        "inboundMessage": hook("An end user sent a message (eventType INBOUND)", "InboundEvent"),
    }
