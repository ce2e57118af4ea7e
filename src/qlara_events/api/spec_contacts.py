"""OpenAPI fragment for contacts and contact lists (Qlara §5), built from the constants the views enforce."""

from __future__ import annotations

from typing import Any

from qlara_events.api import contacts as views
from qlara_events.api.openapi_parts import JSON
from qlara_events.api.openapi_parts import error as _error
from qlara_events.api.openapi_parts import ok as _ok
from qlara_events.api.openapi_parts import ref as _ref
from qlara_events.contacts import fields, phones
from qlara_events.domain import campaigns as rules
from qlara_events.store import contacts as store

#: Text PostgreSQL can store: anything but NUL.
NO_NUL = "^[^\\u0000]*$"


def _text(limit: int, *, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["string", "null"] if nullable else "string", "maxLength": limit, "pattern": NO_NUL}


_ID = {"type": "integer", "minimum": 1, "maximum": views.MAX_ID}
_IDS = {"type": "array", "maxItems": views.MAX_IDS, "items": _ID}
_TS = {"type": "string", "format": "date-time"}
_NULLABLE_STR = {"type": ["string", "null"]}


def schemas() -> dict[str, Any]:
    """Component schemas."""
    contact_props: dict[str, Any] = {
        "id": {"type": "integer"},
        "phoneNumber": {**_NULLABLE_STR, "description": "E.164, as normalised by libphonenumber"},
        "email": _NULLABLE_STR, "firstName": _NULLABLE_STR, "lastName": _NULLABLE_STR,
        "fullName": {**_NULLABLE_STR, "description": "firstName and lastName joined by a space; null when both are"},
        "gender": {"enum": [*fields.GENDERS, None]},
        "customFields": {"type": "object"},
        "isValid": {"type": "boolean", "description": "libphonenumber judges the number valid (false without one)"},
        "communicationSupported": {"type": "array", "items": {"enum": list(fields.CHANNELS)},
                                   "description": "Derived from the number: [\"SMS\"] for a valid mobile (or "
                                                  "fixed-line-or-mobile) number, else []"},
        "isTest": {"type": "boolean"},
        "lastContactType": {"enum": [*fields.CHANNELS, None], "description": "The channel the last campaign "
                            "message to this contact went out on first (its fallbacks may have delivered it)"},
        "lastCampaignType": {"enum": [*rules.SENDING_MODES, None],
                             "description": "The sendingMode of the last campaign sent to this contact"},
        "createdAt": _TS, "updatedAt": _TS,
    }
    contact = {"type": "object", "required": list(contact_props), "properties": contact_props}
    custom = {
        "type": "object", "maxProperties": views.MAX_CUSTOM,
        "propertyNames": {"minLength": 1, "maxLength": views.MAX_CUSTOM_KEY, "pattern": NO_NUL},
        "additionalProperties": {"anyOf": [
            _text(views.MAX_FIELD), {"type": "boolean"}, {"type": "null"},
            {"type": "number", "minimum": -views.MAX_CUSTOM_NUMBER, "maximum": views.MAX_CUSTOM_NUMBER}]},
        "description": "Free fields: strings, booleans or numbers. On update they are merged into the existing "
                       "ones and a null value removes a field.",
    }
    writable: dict[str, Any] = {
        "phoneNumber": {"type": "string", "pattern": phones.E164_PATTERN,
                        "description": "E.164. A number libphonenumber cannot validate is stored with isValid false"},
        "email": {"type": "string", "maxLength": fields.MAX_EMAIL, "pattern": fields.EMAIL_PATTERN},
        "firstName": _text(fields.MAX_NAME, nullable=True), "lastName": _text(fields.MAX_NAME, nullable=True),
        "gender": {"enum": [*fields.GENDERS, None]}, "isTest": {"type": "boolean"}, "customFields": custom,
    }
    nullable_contact = {k: {**v, "type": [v["type"], "null"]} for k, v in writable.items()
                        if k in ("phoneNumber", "email")}
    membership_props = {
        "listIds": {**_IDS, "minItems": 1}, "allContacts": {"type": "boolean", "default": False},
        "contactIds": _IDS, "excludeIdsAllContacts": {**_IDS, "description": "Kept out when allContacts is true"},
    }
    summary_keys = ("total", "created", "updated", "errors", "skipped")
    return {
        "Contact": contact,
        "ListContact": {**contact, "required": [*contact["required"], "associationId"],
                        "properties": {**contact_props, "associationId": {
                            "type": "integer",
                            "description": "The membership's id (DELETE /contacts/list/contacts/{id})"}}},
        "ContactCreate": {
            "type": "object", "additionalProperties": False, "properties": writable,
            "anyOf": [{"required": ["phoneNumber"]}, {"required": ["email"]}],
        },
        "ContactUpdate": {
            "type": "object", "additionalProperties": False, "properties": {**writable, **nullable_contact},
            "description": "Only the fields sent change; a new phoneNumber recomputes isValid and "
                           "communicationSupported. A contact keeps a phoneNumber or an email.",
        },
        "ContactList": {
            "type": "object", "required": ["id", "name", "description", "isTest", "contactCount", "createdAt",
                                           "updatedAt"],
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "description": _NULLABLE_STR,
                           "isTest": {"type": "boolean"}, "contactCount": {"type": "integer"},
                           "createdAt": _TS, "updatedAt": _TS},
        },
        "ContactListCreate": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {**_text(fields.MAX_NAME), "minLength": 1},
                           "description": _text(views.MAX_FIELD, nullable=True), "isTest": {"type": "boolean"}},
        },
        "Memberships": {
            "type": "object", "additionalProperties": False, "required": ["listIds"], "properties": membership_props,
            "anyOf": [{"required": ["contactIds"]},
                      {"required": ["allContacts"], "properties": {"allContacts": {"const": True}}}],
            "description": "contactIds is required unless allContacts is true",
        },
        "ContactImport": {
            "type": "object",
            "required": ["message", "fileName", "format", "mode", "listId", "header", "mappedColumns",
                         "ignoredColumns", "summary", "errors", "errorsTruncated", "preview"],
            "properties": {
                "message": {"type": "string"}, "fileName": {"type": "string"},
                "format": {"enum": ["CSV", "XLSX", "XLS", "VCARD"]}, "mode": {"const": "CREATE_UPDATE"},
                "listId": {"type": ["integer", "null"]},
                "header": {"type": "boolean", "description": "Whether the first row was read as a header"},
                "mappedColumns": {"type": "array", "items": {"type": "string"}},
                "ignoredColumns": {"type": "array", "items": {"type": "string"}},
                "summary": {"type": "object", "required": list(summary_keys),
                            "properties": {k: {"type": "integer"} for k in summary_keys},
                            "description": "total data rows = created + updated + errors + skipped (blank rows)"},
                "errors": {"type": "array", "maxItems": 1000, "items": {
                    "type": "object", "required": ["row", "reason"],
                    "properties": {"row": {"type": "integer", "description": "1-based row of the file (header "
                                                                            "included); for vCard the card's number"},
                                   "reason": {"type": "string"}}}},
                "errorsTruncated": {"type": "boolean", "description": "More errors than the 1,000 listed"},
                "preview": {"type": "array", "items": {"type": "object"}},
            },
        },
        "ContactImportJobQueued": {
            "type": "object", "required": ["importId", "status", "fileName", "createdAt"],
            "properties": {"importId": {"type": "integer"}, "status": {"const": "PENDING"},
                           "fileName": {"type": "string"}, "createdAt": _TS},
        },
        "ContactImportJob": {
            "type": "object",
            "required": ["importId", "status", "fileName", "createdAt", "startedAt", "completedAt", "result",
                         "error"],
            "properties": {
                "importId": {"type": "integer"},
                "status": {"enum": ["PENDING", "RUNNING", "COMPLETED", "FAILED"],
                           "description": "PENDING: queued (or its worker died: another resumes it); RUNNING: a "
                                          "worker imports it; COMPLETED: see result; FAILED: see error"},
                "fileName": {"type": "string"}, "createdAt": _TS,
                "startedAt": {**_TS, "type": ["string", "null"]},
                "completedAt": {**_TS, "type": ["string", "null"]},
                "result": {"anyOf": [_ref("ContactImport"), {"type": "null"}],
                           "description": "COMPLETED: the report the synchronous upload returns, per-row errors "
                                          "included"},
                "error": {"anyOf": [_ref("Error"), {"type": "null"}],
                          "description": "FAILED: the error body the synchronous upload would have returned "
                                         "(status 400 for a corrupt file, 413 past a limit...)"},
            },
        },
    }


def _q(name: str, schema: dict[str, Any], description: str | None = None, *, required: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        out["description"] = description
    if required:
        out["required"] = True
    return out


def _id_list(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return _q(name, {"type": "string", "pattern": views.ID_LIST_PATTERN}, description, required=required)


def _search_params(*, in_list: bool) -> list[dict[str, Any]]:
    channel = {"enum": list(fields.CHANNELS)}
    params = [
        _id_list("listIds", "Comma-separated list ids: only (distinct) members of these lists"),
        _id_list("notListIds", "Comma-separated list ids: no members of these lists"),
        _q("search", _text(200), "Case-insensitive substring of first name, last name, email or phone number"),
        _q("gender", {"enum": list(fields.GENDERS)}), _q("isValid", {"type": "boolean"}),
        _q("communicationSupported", channel), _q("isTest", {"type": "boolean"}),
        _q("phoneNumber", _text(40), "Exact match on the E.164 form (spaces and dashes are normalised away)"),
        _q("email", _text(fields.MAX_EMAIL), "Exact match, case-insensitive"),
        _q("page", {"type": "integer", "minimum": 0, "maximum": views.MAX_PAGE}, "0-based"),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}),
        _q("sortBy", {"enum": list(store.SORTABLE), "default": "fullName"}),
        _q("sortOrder", {"enum": ["asc", "desc"], "default": "asc"}, "Contacts without the sort value come last"),
        _q("sortPriorityListId", _ID, "Members of this list come first"),
    ]
    if in_list:
        params += [_q("lastContactType", channel), _q("lastCampaignType", {"enum": list(rules.SENDING_MODES)})]
    return params


def _upload(summary: str, op_id: str, file_pattern: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": op_id, "tags": ["Contacts"], "summary": summary,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file", "fileName"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "fileName": {"type": "string", "pattern": file_pattern,
                             "description": "The original file name: its extension gives the format"},
                "limit": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 10,
                          "description": "Parsed rows echoed in preview; never caps the import"},
                "listId": {**_ID, "description": "Also add the imported contacts to this list"},
                **extra}}}}},
        "parameters": [{
            "name": "Prefer", "in": "header", "schema": {"type": "string"},
            "description": "`respond-async` (RFC 7240): store the file and answer 202 at once with an import job "
                           "to poll at Location; without it the import runs before the answer (200). Other "
                           "preferences are ignored"}],
        "responses": {
            "200": _ok(_ref("ContactImport"), "File parsed successfully: counts, per-row errors, preview"),
            "202": {**_ok(_ref("ContactImportJobQueued"), "Prefer: respond-async: the file is stored and the "
                          "import queued; poll GET /contacts/upload/{importId} (Location)"),
                    "headers": {"Location": {"schema": {"type": "string"},
                                             "description": "The job: /partner-gateway/v1/contacts/upload/{importId}"},
                                "Preference-Applied": {"schema": {"const": "respond-async"}}}},
            "400": _error("Missing part, bad field, unsupported extension, or a corrupt file"),
            "401": _error("API key missing, invalid or revoked"),
            "404": _error("listId is not a list of the account"),
            "413": _error(f"File over {views.MAX_UPLOAD} bytes, or past an import limit (rows, XLSX expansion, "
                          "XLS size): nothing is kept"),
            "429": _error("Rate limit exceeded, or the account already runs its share of imports, or (respond-async) "
                          "has as many import jobs queued or running as it may (Retry-After)"),
            "503": _error("This process already runs as many imports as it has connections for (Retry-After)")},
    }


def paths(p: str) -> dict[str, Any]:
    """Path items."""
    auth = {"401": _error("API key missing, invalid or revoked"), "429": _error("Rate limit exceeded")}
    tag = ["Contacts"]
    ltag = ["Contact lists"]
    cid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    no_contact = _error("No such contact in the account")
    bad = _error("Invalid parameter or body")
    deleted = _ok({"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "integer"}}})
    json_body = {"413": _error(f"Body over {views.MAX_BODY} bytes")}
    contact_body = {"required": True, "content": {JSON: {"schema": _ref("ContactCreate")}}}
    membership_body = {"required": True, "content": {JSON: {"schema": _ref("Memberships")}}}
    missing_lists = _error("A listId is not a list of the account")
    return {
        f"{p}/contacts": {
            "get": {"operationId": "searchContacts", "tags": tag, "summary": "Search the account's contacts",
                    "parameters": _search_params(in_list=False),
                    "responses": {"200": _ok({"type": "array", "items": _ref("Contact")}), "400": bad, **auth}},
            "post": {"operationId": "createContact", "tags": tag, "summary": "Create a contact",
                     "requestBody": contact_body,
                     "responses": {"201": _ok(_ref("Contact"), "Created"), "400": bad, **auth, **json_body,
                                   "409": _error("The phone number (or, for a contact without one, the email) is "
                                                 "already a contact of the account")}},
            "delete": {"operationId": "deleteContacts", "tags": tag,
                       "summary": "Delete contacts by ids, or every contact except notIds (ids wins); with neither, "
                                  "nothing is deleted",
                       "parameters": [_id_list("ids", "Comma-separated ids of the contacts to delete"),
                                      _id_list("notIds", "Delete every other contact of the account")],
                       "responses": {"200": deleted, "400": bad, **auth}},
        },
        f"{p}/contacts/{{id}}": {
            "get": {"operationId": "getContact", "tags": tag, "summary": "One contact", "parameters": [cid],
                    "responses": {"200": _ok(_ref("Contact")), **auth, "404": no_contact}},
            "put": {"operationId": "updateContact", "tags": tag,
                    "summary": "Partial update (list memberships are untouched)", "parameters": [cid],
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ContactUpdate")}}},
                    "responses": {"200": _ok(_ref("Contact")), "400": bad, **auth, **json_body, "404": no_contact,
                                  "409": _error("Another contact of the account has this phone number (or email)")}},
        },
        f"{p}/contacts/upload": {"post": _upload(
            "Import CSV (or other delimited text), XLSX or XLS: CREATE_UPDATE matched by phone number",
            "uploadContacts", "\\.([cC][sS][vV]|[tT][xX][tT]|[tT][sS][vV]|[xX][lL][sS][xXmM]?)$",
            {"removeHead": {"type": "boolean", "description": "true: the first row is a header; false: no header "
                            "(columns phoneNumber, firstName, lastName, email, gender); absent: a header when the "
                            "first row names a phone or email column"}})},
        f"{p}/contacts/upload/vcard": {"post": _upload(
            "Import a vCard file (FN, N, TEL, EMAIL): CREATE_UPDATE matched by phone number",
            "uploadContactsVcard", "\\.[vV][cC][fF]$", {})},
        f"{p}/contacts/upload/{{importId}}": {"get": {
            "operationId": "getContactImport", "tags": tag,
            "summary": "An import job (Prefer: respond-async): its status, and the report once COMPLETED",
            "parameters": [{"name": "importId", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _ok(_ref("ContactImportJob")), **auth,
                          "404": _error("No such import in the account (or it ended longer ago than the "
                                        "retention)")}}},
        f"{p}/contacts/list": {
            "post": {"operationId": "createContactList", "tags": ltag, "summary": "Create a list",
                     "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ContactListCreate")}}},
                     "responses": {"201": _ok(_ref("ContactList"), "Created"), "400": bad, **auth, **json_body}},
            "get": {"operationId": "findContactLists", "tags": ltag, "summary": "The account's lists",
                    "parameters": [
                        _q("search", _text(200), "Case-insensitive substring of the name or description"),
                        _q("isTest", {"type": "boolean"}),
                        _q("page", {"type": "integer", "minimum": 0, "maximum": views.MAX_PAGE}),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}),
                        _q("sortBy", {"enum": list(store.LIST_SORTABLE), "default": "id"}),
                        _q("sortOrder", {"enum": ["asc", "desc"], "default": "asc"})],
                    "responses": {"200": _ok({"type": "array", "items": _ref("ContactList")}), "400": bad, **auth}},
            "delete": {"operationId": "deleteContactLists", "tags": ltag,
                       "summary": "Delete lists and their memberships (the contacts stay)",
                       "parameters": [_id_list("ids", "Comma-separated list ids", required=True)],
                       "responses": {"200": deleted, "400": bad, **auth}},
        },
        f"{p}/contacts/list/{{listId}}/contacts": {"get": {
            "operationId": "listContactsOfList", "tags": ltag,
            "summary": "The list's members, with the search filters; each carries its associationId",
            "parameters": [{"name": "listId", "in": "path", "required": True, "schema": {"type": "string"}},
                           *_search_params(in_list=True)],
            "responses": {"200": _ok({"type": "array", "items": _ref("ListContact")}), "400": bad, **auth,
                          "404": _error("No such list in the account")}}},
        f"{p}/contacts/list/contacts": {
            "post": {"operationId": "addContactsToLists", "tags": ltag,
                     "summary": "Add contacts to lists; existing memberships are kept, never duplicated",
                     "requestBody": membership_body,
                     "responses": {"201": _ok({"type": "object", "required": ["created", "ids"], "properties": {
                         "created": {"type": "integer"},
                         "ids": {"type": "array", "items": {"type": "integer"},
                                 "description": "Ids of the memberships created"}}}, "Created"),
                         "400": bad, **auth, **json_body, "404": missing_lists}},
            "delete": {"operationId": "removeContactsFromLists", "tags": ltag,
                       "summary": "Remove memberships (neither contacts nor lists are deleted)",
                       "requestBody": membership_body,
                       "responses": {"200": deleted, "400": _error("Empty listIds, contactIds missing while "
                                                                   "allContacts is false, or another invalid field"),
                                     **auth, **json_body, "404": missing_lists}},
        },
        f"{p}/contacts/list/contacts/{{id}}": {"delete": {
            "operationId": "deleteContactListMembership", "tags": ltag, "summary": "Delete one membership by its id",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"204": {"description": "Deleted"}, **auth,
                          "404": _error("No such membership in the account's lists")}}},
    }
