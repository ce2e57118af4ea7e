"""The OpenAPI 3.1 document of everything this service serves; a test keeps it equal to the routes.

Built in Python so shared pieces (the error body, the status enum, the statusCode table) are written
once and match the code that produces them.
"""

from __future__ import annotations

from typing import Any

from qlara_events import __version__
from qlara_events.domain.status import STATUS_CODES, Channel, DeliveryStatus

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_CHANNEL_QUERY = {
    "name": "channel", "in": "query", "required": True,
    "description": "The channel the message was sent on; a message on another channel is a 404.",
    "schema": _ref("Channel"),
}
_AUTH_ERRORS = {"401": _error("API key missing, invalid or revoked"),
                "403": _error("The key is restricted to other channels")}

_STATUS_CODE_TABLE = ", ".join(f"{code} = {status.value}" for status, code in
                               sorted(STATUS_CODES.items(), key=lambda kv: kv[1]))


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
                            "schema": {"type": "string", "minLength": 1}}, _CHANNEL_QUERY],
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
                "503": _error("Kafka did not acknowledge; retry after Retry-After seconds"),
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
                    "503": _error("Kafka did not acknowledge; retry"),
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Qlara Platform API (qlara-events)",
            "version": __version__,
            "description": "Delivery status, history and webhooks served by qlara-events. Errors always carry "
                           "the JSON body {status, error, message}. statusCode table: " + _STATUS_CODE_TABLE + ".",
        },
        "servers": [{"url": "/"}],
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
