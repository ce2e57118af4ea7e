"""OpenAPI fragment for the inbox (Qlara §8)."""

from __future__ import annotations

from typing import Any

from qlara_events.api import inbox as views
from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ok as _ok
from qlara_events.api.openapi_parts import ref as _ref

#: Text PostgreSQL can store (no NUL) with at least one character that is not white space.
_TEXT_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"


def schemas() -> dict[str, Any]:
    """Component schemas."""
    ts = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Conversation": {
            "type": "object",
            "required": ["chatId", "channel", "contact", "unreadCount", "lastMessageDate", "archived", "assignee"],
            "properties": {
                "chatId": {"type": "integer"}, "channel": _ref("Channel"),
                "contact": {"type": "string", "description": "The end user's address"},
                "ourAddress": {"type": ["string", "null"]},
                "unreadCount": {"type": "integer", "minimum": 0},
                "lastMessagePreview": {"type": ["string", "null"]}, "lastMessageDate": ts,
                "lastInboundDate": ts,
                "replyWindowOpen": {"type": ["boolean", "null"],
                                    "description": "WhatsApp: a free-form reply is possible (24-hour window)"},
                "archived": {"type": "boolean"},
                "assignee": {"type": ["object", "null"], "properties": {"userId": {"type": "integer"},
                                                                        "name": {"type": "string"}}},
                "createdAt": ts, "updatedAt": ts,
            },
        },
        "ConversationMessage": {
            "type": "object", "required": ["id", "direction", "text", "messageType", "timestamp"],
            "properties": {
                "id": {"type": "integer"}, "direction": {"type": "string", "enum": ["INBOUND", "OUTBOUND"]},
                "messageId": {"type": ["string", "null"]}, "text": {"type": "string"},
                "messageType": {"type": "string"}, "media": {"type": "array", "items": {"type": "object"}},
                "timestamp": ts,
            },
        },
        "ReplyRequest": {
            "type": "object", "required": ["chatId"],
            "anyOf": [{"required": ["text"]}, {"required": ["template"]}],
            "description": "text, template or both; a field that is sent must be valid",
            "properties": {"chatId": {"type": "integer", "minimum": 1, "maximum": views.MAX_ID},
                           "text": {"type": "string", "minLength": 1, "maxLength": views.MAX_TEXT,
                                    "pattern": _TEXT_PATTERN},
                           "template": {"type": "object", "description": "WhatsApp template, required outside "
                                                                          "the 24-hour window"}},
        },
        "ReplyAccepted": {
            "type": "object", "required": ["chatId", "id", "messageId", "status"],
            "properties": {"chatId": {"type": "integer"}, "id": {"type": "integer"},
                           "messageId": {"type": "string"}, "customerMessageId": {"type": "string"},
                           "status": {"const": "ACCEPTED"}},
        },
        "AssignableUser": {
            "type": "object", "required": ["userId", "name"],
            "properties": {"userId": {"type": "integer"}, "name": {"type": "string"},
                           "email": {"type": ["string", "null"]}, "avatarUrl": {"type": ["string", "null"]}},
        },
    }


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    base = f"{p}/inbox/conversations"
    tag = ["Inbox"]
    auth = {"401": _error("API key missing, invalid or revoked"), "429": _error("Rate limit exceeded")}
    chat = {"name": "chatId", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = _error("No such conversation in the account")
    done = {"204": {"description": "Done"}, "403": _error("Key restricted to other channels"), **auth,
            "404": missing}

    def q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    return {
        base: {"get": {
            "operationId": "listConversations", "tags": tag, "summary": "Conversations of the account",
            "parameters": [
                q("dateFrom", {"anyOf": [{"type": "string", "format": "date"},
                                         {"type": "string", "format": "date-time"}]},
                  "Only conversations with a message at or after this date (a date is midnight UTC)"),
                q("channelIds", {"type": "string", "pattern": views.CHANNEL_IDS_PATTERN},
                  "Comma-separated channels (SMS, RCS, WHATSAPP)"),
                q("unreadOnly", {"type": "boolean"}),
                q("orderBy", {"type": "string", "pattern": views.ORDER_BY_PATTERN},
                  "+ (ascending) or - (descending, also without a sign) followed by lastMessageDate, createdAt, "
                  "unreadCount or chatId; default -lastMessageDate. A + sent unencoded arrives as a space, which "
                  "is accepted as +"),
                q("archived", {"type": "string", "enum": ["true", "false", "all"]}, "Default false"),
                q("page", {"type": "integer", "minimum": 0, "maximum": views.MAX_PAGE}),
                q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Default 20"),
            ],
            "responses": {"200": _ok({"type": "array", "items": _ref("Conversation")}),
                          "400": _error("Invalid filter"), **auth}}},
        f"{base}/assignable-users": {"get": {
            "operationId": "listAssignableUsers", "tags": tag, "summary": "The account's users",
            "responses": {"200": _ok({"type": "array", "items": _ref("AssignableUser")}), **auth}}},
        f"{base}/reply": {"post": {
            "operationId": "replyToConversation", "tags": tag,
            "summary": "Reply on the conversation's channel (a send request to the upstream senders)",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ReplyRequest")}}},
            "responses": {"202": _ok(_ref("ReplyAccepted"), "Accepted"),
                          "400": _error("Invalid body, or a free-form WhatsApp reply outside the 24-hour window"),
                          "403": _error("Key restricted to other channels"), **auth, "404": missing,
                          "503": _error("Kafka unavailable; retry")}}},
        f"{base}/{{chatId}}": {"get": {
            "operationId": "getConversation", "tags": tag, "summary": "One conversation", "parameters": [chat],
            "responses": {"200": _ok(_ref("Conversation")), "403": _error("Key restricted to other channels"),
                          **auth, "404": missing}}},
        f"{base}/{{chatId}}/messages": {"get": {
            "operationId": "getConversationMessages", "tags": tag, "summary": "The thread, chronological",
            "parameters": [chat, q("idFrom", {"type": "integer", "minimum": 0, "maximum": views.MAX_MESSAGE_ID},
                                   "Messages with id >= idFrom"),
                           q("idTo", {"type": "integer", "minimum": 0, "maximum": views.MAX_MESSAGE_ID},
                             "Messages with id <= idTo"),
                           q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
            "responses": {"200": _ok({"type": "array", "items": _ref("ConversationMessage")}),
                          "400": _error("Invalid window"), "403": _error("Key restricted to other channels"),
                          **auth, "404": missing}}},
        f"{base}/{{chatId}}/read": {"patch": {"operationId": "markConversationRead", "tags": tag,
                                              "summary": "Reset the unread counter", "parameters": [chat],
                                              "responses": done}},
        f"{base}/{{chatId}}/archive": {"patch": {"operationId": "archiveConversation", "tags": tag,
                                                 "summary": "Hide from the default list", "parameters": [chat],
                                                 "responses": done}},
        f"{base}/{{chatId}}/unarchive": {"patch": {"operationId": "unarchiveConversation", "tags": tag,
                                                   "summary": "Show again", "parameters": [chat], "responses": done}},
        f"{base}/{{chatId}}/assignee": {
            "post": {"operationId": "assignConversation", "tags": tag, "summary": "Assign to a user (replaces)",
                     "parameters": [chat],
                     "requestBody": {"required": True, "content": {JSON: {"schema": {
                         "type": "object", "required": ["userId"],
                         "properties": {"userId": {"type": "integer", "minimum": 1, "maximum": views.MAX_ID}}}}}},
                     "responses": {**done, "400": _error("userId missing or not an integer"),
                                   "404": _error("Conversation or user not in the account")}},
            "delete": {"operationId": "unassignConversation", "tags": tag, "summary": "Remove the assignee",
                       "parameters": [chat], "responses": done},
        },
    }
