"""Contacts and contact lists (Qlara §5): search, CRUD, bulk memberships and streamed CSV/XLS(X)/vCard imports."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import asyncpg
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from qlara_events.api import params
from qlara_events.api.auth import PREFIX, get_pool, principal
from qlara_events.api.shared import STORE
from qlara_events.config import Settings
from qlara_events.contacts import fields, phones, readers
from qlara_events.domain import campaigns as rules
from qlara_events.errors import BadRequest, Conflict, ImportsBusy, NotFound, PayloadTooLarge
from qlara_events.http import json_object, json_response, text_part
from qlara_events.import_jobs import IMPORT_RETRY_AFTER, VCARD, ImportSlots, ImportSpec, ImportWorker, run_import
from qlara_events.storage import BlobStore, new_key
from qlara_events.store import contacts as store
from qlara_events.store import imports as import_jobs
from qlara_events.store.db import create_pool

BASE: Final = f"{PREFIX}/contacts"
LISTS: Final = f"{BASE}/list"
MAX_ID: Final = 2**63 - 1
MAX_PAGE: Final = 10_000_000
MAX_UPLOAD: Final = 256 * 1024 * 1024
CHUNK: Final = 256 * 1024
MAX_FIELD: Final = 1000
MAX_BODY: Final = 1024 * 1024
#: Ids in a query string: comma-separated, no blanks (the documented multi-value convention).
ID_LIST: Final = re.compile(r"^[0-9]{1,18}(,[0-9]{1,18})*$")
ID_LIST_PATTERN: Final = ID_LIST.pattern
MAX_IDS: Final = 10_000
MAX_CUSTOM: Final = 50
MAX_CUSTOM_KEY: Final = 64
MAX_CUSTOM_NUMBER: Final = 1e15
LIMITS: Final = web.AppKey("import_limits", readers.Limits)


def _limits(request: web.Request) -> readers.Limits:
    return request.app[LIMITS]


IMPORTS: Final = web.AppKey("import_slots", ImportSlots)
IMPORT_WORKER: Final = web.AppKey("import_worker", ImportWorker)


def _ts(v: dt.datetime) -> str:
    return v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def contact_json(r: asyncpg.Record) -> dict[str, Any]:
    """A contact as the API shows it."""
    out = {
        "id": r["contact_id"], "phoneNumber": r["phone_number"], "email": r["email"], "firstName": r["first_name"],
        "lastName": r["last_name"], "fullName": r["full_name"], "gender": r["gender"],
        "customFields": r["custom_fields"], "isValid": r["is_valid"],
        "communicationSupported": list(r["communication_supported"]), "isTest": r["is_test"],
        "lastContactType": r["last_contact_type"], "lastCampaignType": r["last_campaign_type"],
        "createdAt": _ts(r["created_at"]), "updatedAt": _ts(r["updated_at"]),
    }
    if "association_id" in r:
        out["associationId"] = r["association_id"]
    return out


def list_json(r: asyncpg.Record) -> dict[str, Any]:
    """A contact list with its member count."""
    return {"id": r["list_id"], "name": r["name"], "description": r["description"], "isTest": r["is_test"],
            "contactCount": r["contact_count"], "createdAt": _ts(r["created_at"]), "updatedAt": _ts(r["updated_at"])}


# -- query and body parsing ------------------------------------------------------------------------------------

def _id(text: str) -> int | None:
    """A resource id from a path; None when it cannot be one (the caller answers 404)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None


def _id_list(q: Any, name: str) -> list[int] | None:
    value = q.get(name)
    if value is None:
        return None
    if not ID_LIST.match(value):
        raise BadRequest(f"{name} must be comma-separated numeric ids")
    ids = sorted({int(v) for v in value.split(",")})
    if len(ids) > MAX_IDS:
        raise BadRequest(f"{name} accepts at most {MAX_IDS} ids")
    return ids


def _bool(q: Any, name: str) -> bool | None:
    value = q.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return bool(value == "true")


def _int(q: Any, name: str, default: int, lo: int, hi: int) -> int:
    value = q.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.lstrip("-").isdigit() or len(value) > 19 or not lo <= int(value) <= hi:
        raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
    return int(value)


def _text(q: Any, name: str, limit: int = 200) -> str | None:
    value = q.get(name)
    if value is None:
        return None
    if len(value) > limit or "\x00" in value:
        raise BadRequest(f"{name} must be text of at most {limit} characters")
    return str(value)


def _choice(q: Any, name: str, allowed: tuple[str, ...]) -> str | None:
    value = q.get(name)
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of " + ", ".join(allowed))
    return None if value is None else str(value)


def _paging(q: Any, default_limit: int, sortable: dict[str, str], default_sort: str) -> tuple[int, int, str, bool]:
    page = _int(q, "page", 0, 0, MAX_PAGE)
    limit = _int(q, "limit", default_limit, 1, 1000)
    sort_by = _choice(q, "sortBy", tuple(sortable)) or default_sort
    order = _choice(q, "sortOrder", ("asc", "desc")) or "asc"
    return page, limit, sortable[sort_by], order == "desc"


def _filters(q: Any, *, in_list: bool) -> store.Filters:
    phone = _text(q, "phoneNumber", 40)
    if phone is not None:
        try:  # the stored form, so "+39 333 ..." finds +39333...; anything else matches nothing as typed
            phone = phones.from_cell(phone).e164
        except ValueError:
            pass
    return store.Filters(
        list_ids=_id_list(q, "listIds"), not_list_ids=_id_list(q, "notListIds"), search=_text(q, "search"),
        gender=_choice(q, "gender", fields.GENDERS), is_valid=_bool(q, "isValid"),
        channel=_choice(q, "communicationSupported", fields.CHANNELS), is_test=_bool(q, "isTest"),
        phone_number=phone, email=_text(q, "email", fields.MAX_EMAIL),
        last_contact_type=_choice(q, "lastContactType", fields.CHANNELS) if in_list else None,
        last_campaign_type=_choice(q, "lastCampaignType", tuple(rules.SENDING_MODES)) if in_list else None)


async def _json_object(request: web.Request) -> dict[str, Any]:
    return await json_object(request, limit=MAX_BODY)


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _custom_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_CUSTOM:
        raise BadRequest(f"customFields must be an object of at most {MAX_CUSTOM} fields")
    for key, v in value.items():
        if not 1 <= len(key) <= MAX_CUSTOM_KEY or "\x00" in key:
            raise BadRequest(f"customFields names must be 1 to {MAX_CUSTOM_KEY} characters")
        ok = (v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= MAX_FIELD and "\x00" not in v)
              or (isinstance(v, (int, float)) and abs(v) <= MAX_CUSTOM_NUMBER))
        if not ok:
            raise BadRequest(f"customFields.{key} must be a string (at most {MAX_FIELD} characters), a boolean, "
                             f"a number (at most {MAX_CUSTOM_NUMBER:.0e} in size) or null")
    return value


def _contact_values(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """The store values of a create (``partial`` False) or partial-update body; 400 on anything invalid."""
    unknown = sorted(set(body) - set(store.UPDATABLE) | ({"isValid", "communicationSupported"} & set(body)))
    if unknown:
        raise BadRequest("unknown or read-only fields: " + ", ".join(unknown[:10]))
    values: dict[str, Any] = {}
    try:
        if "phoneNumber" in body:
            raw = _opt_str(body, "phoneNumber")
            if raw is None and not partial:
                raise BadRequest("phoneNumber must be a string")
            phone = phones.from_e164(raw) if raw is not None else None
            # Changing the number re-derives what depends on it.
            values.update(phoneNumber=phone.e164 if phone else None, isValid=bool(phone and phone.is_valid),
                          communicationSupported=list(phone.channels) if phone else [])
        if "email" in body:
            raw = _opt_str(body, "email")
            if raw is None and not partial:
                raise BadRequest("email must be a string")
            values["email"] = fields.email(raw) if raw is not None else None
        for name in ("firstName", "lastName"):
            if name in body:
                raw = _opt_str(body, name)
                values[name] = fields.name(raw, name) if raw is not None else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if "gender" in body:
        if body["gender"] is not None and body["gender"] not in fields.GENDERS:
            raise BadRequest("gender must be one of " + ", ".join(fields.GENDERS) + " or null")
        values["gender"] = body["gender"]
    if "isTest" in body:
        if not isinstance(body["isTest"], bool):
            raise BadRequest("isTest must be a boolean")
        values["isTest"] = body["isTest"]
    if "customFields" in body:
        custom = _custom_fields(body["customFields"])
        values["customFields"] = custom if partial else {k: v for k, v in custom.items() if v is not None}
    if not partial and not values.get("phoneNumber") and not values.get("email"):
        raise BadRequest("a phoneNumber or an email is required")
    return values


def _contact_id(request: web.Request) -> int:
    found = _id(request.match_info["id"])
    if found is None:
        raise NotFound("no such contact in this account")
    return found


# -- contacts --------------------------------------------------------------------------------------------------

async def search_contacts(request: web.Request) -> web.Response:
    """GET /contacts: the §5 filters, sorted and paged (plain array)."""
    q = request.query
    filters = _filters(q, in_list=False)
    page, limit, column, desc = _paging(q, 10, store.SORTABLE, "fullName")
    priority = _int(q, "sortPriorityListId", 0, 1, MAX_ID) or None
    rows = await store.search(get_pool(request.app), principal(request).account_id, filters, sort_column=column,
                              descending=desc, priority_list_id=priority, limit=limit,
                              offset=params.offset(page, limit))
    return json_response([contact_json(r) for r in rows])


async def create_contact(request: web.Request) -> web.Response:
    """POST /contacts → 201; 409 when the phone number (or, without one, the email) is already a contact."""
    values = _contact_values(await _json_object(request), partial=False)
    try:
        row = await store.insert(get_pool(request.app), principal(request).account_id, values)
    except asyncpg.UniqueViolationError:
        raise Conflict("a contact with this phone number (or, without a phone number, this email) already "
                       "exists in the account: update it with PUT /contacts/{id}") from None
    return json_response(contact_json(row), status=201)


async def get_contact(request: web.Request) -> web.Response:
    """GET /contacts/{id}"""
    row = await store.get(get_pool(request.app), principal(request).account_id, _contact_id(request))
    if row is None:
        raise NotFound("no such contact in this account")
    return json_response(contact_json(row))


async def update_contact(request: web.Request) -> web.Response:
    """PUT /contacts/{id}: only the fields sent change; list memberships are untouched."""
    contact_id = _contact_id(request)
    values = _contact_values(await _json_object(request), partial=True)
    try:
        row = await store.update(get_pool(request.app), principal(request).account_id, contact_id, values)
    except asyncpg.UniqueViolationError:
        raise Conflict("another contact of the account has this phone number (or, without a phone number, "
                       "this email)") from None
    except asyncpg.CheckViolationError:
        raise BadRequest("a contact needs a phoneNumber or an email: both cannot be removed") from None
    if row is None:
        raise NotFound("no such contact in this account")
    return json_response(contact_json(row))


async def delete_contacts(request: web.Request) -> web.Response:
    """DELETE /contacts?ids= (wins) or ?notIds= (every other contact of the account) → {"deleted": n}."""
    ids = _id_list(request.query, "ids")
    keep = _id_list(request.query, "notIds")  # validated even when ids wins: a malformed one is a 400
    if ids is not None:
        keep = None
    if ids is None and keep is None:  # neither mode chosen: nothing to delete (never "everything")
        return json_response({"deleted": 0})
    n = await store.delete(get_pool(request.app), principal(request).account_id, ids=ids, keep=keep)
    return json_response({"deleted": n})


# -- imports ---------------------------------------------------------------------------------------------------

class _Form:
    """The parts of an import request: the file (streamed to a temporary file, or for a job to the blob store)
    and the small text fields."""

    def __init__(self, blobs: BlobStore | None = None) -> None:
        self.path: Path | None = None
        self.size = 0
        self.fields: dict[str, str] = {}
        self._blobs = blobs
        #: The file's blob key (with ``blobs``); None once a job has taken it over.
        self.key: str | None = None

    async def read(self, request: web.Request, text_fields: tuple[str, ...]) -> None:
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("send multipart/form-data with a 'file' part")
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise BadRequest("nested multipart is not supported")
                if part.name == "file":
                    if self.path is not None:
                        raise BadRequest("one 'file' part per request")
                    await self._save(part)
                elif part.name in text_fields:
                    self.fields[part.name] = await text_part(part, MAX_FIELD)
        except (ValueError, HttpProcessingError) as exc:  # -- how aiohttp's multipart parser reports a malformed body
            raise BadRequest(f"malformed multipart body: {exc}") from None
        if self.path is None:
            raise BadRequest("the 'file' part is required")

    async def _chunks(self, part: BodyPartReader) -> AsyncIterator[bytes]:
        while chunk := await part.read_chunk(CHUNK):
            self.size += len(chunk)
            if self.size > MAX_UPLOAD:
                raise PayloadTooLarge(f"imports are limited to {MAX_UPLOAD} bytes")
            yield chunk

    async def _save(self, part: BodyPartReader) -> None:
        if self._blobs is not None:
            self.key = new_key("imp")
            await self._blobs.write(self.key, self._chunks(part))  # streamed: never whole in memory
            self.path = self._blobs.path(self.key)
            return
        fd, name = tempfile.mkstemp(prefix="qlara-import-")
        self.path = Path(name)
        with os.fdopen(fd, "wb") as f:
            async for chunk in self._chunks(part):
                f.write(chunk)

    async def cleanup(self) -> None:
        if self._blobs is not None:
            if self.key is not None:
                await self._blobs.delete(self.key)
        elif self.path is not None:
            self.path.unlink(missing_ok=True)

    def file_name(self) -> str:
        name = self.fields.get("fileName")
        if not name:
            raise BadRequest("fileName is required (the original file name; its extension gives the format)")
        return name

    def flag(self, name: str) -> bool | None:
        value = self.fields.get(name)
        if value is None or value == "":
            return None
        if value.strip().lower() not in ("true", "false"):
            raise BadRequest(f"{name} must be true or false")
        return value.strip().lower() == "true"

    def number(self, name: str, lo: int, hi: int) -> int | None:
        value = (self.fields.get(name) or "").strip()
        if not value:
            return None
        if not value.isascii() or not value.isdigit() or len(value) > 19 or not lo <= int(value) <= hi:
            raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
        return int(value)

    def preview(self) -> int:
        """How many parsed rows to echo (the limit part: default 10, at most 1000; it never caps the import)."""
        found = self.number("limit", 0, 1000)
        return 10 if found is None else found

    def spec(self, file_name: str, fmt: str, *, header: bool | None) -> ImportSpec:
        return ImportSpec(file_name, fmt, header, self.preview(), self.number("listId", 1, MAX_ID))


def respond_async(request: web.Request) -> bool:
    """Whether the request asks for an asynchronous answer: ``Prefer: respond-async`` (RFC 7240 §4.1).

    Preferences are comma-separated, may carry parameters after ``;`` or a value after ``=``, and their names
    are case-insensitive; any other preference is ignored, as the RFC asks.
    """
    return any(item.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async"
               for header in request.headers.getall("Prefer", ()) for item in header.split(","))


def _form(request: web.Request) -> _Form:
    """A form whose file goes to the blob store when the import will be a job."""
    return _Form(request.app[STORE] if respond_async(request) else None)


def import_job_json(r: asyncpg.Record) -> dict[str, Any]:
    """An import job as GET /contacts/upload/{importId} shows it."""
    status = r["status"]
    if status == "PENDING" and r["lease_until"] is not None and r["lease_until"] > dt.datetime.now(dt.UTC):
        status = "RUNNING"  # leased to a worker; an expired lease is a PENDING job another worker will resume
    return {"importId": r["import_id"], "status": status, "fileName": r["file_name"],
            "createdAt": _ts(r["created_at"]), "startedAt": _ts_or_none(r["started_at"]),
            "completedAt": _ts_or_none(r["completed_at"]), "result": r["result"], "error": r["error"]}


def _ts_or_none(v: dt.datetime | None) -> str | None:
    return None if v is None else _ts(v)


async def _queue(request: web.Request, form: _Form, spec: ImportSpec) -> web.Response:
    """Queue the stored file as an import job → 202 with its id and where to poll it."""
    assert form.key is not None
    worker = request.app[IMPORT_WORKER]
    async with get_pool(request.app).acquire() as conn:
        row = await import_jobs.create(conn, principal(request).account_id, spec.file_name, spec.params(),
                                       form.key, worker.max_pending)
    if row is None:
        raise ImportsBusy(f"the account already has {worker.max_pending} imports queued or running; retry once "
                          f"one has finished (GET {BASE}/upload/{{importId}})", retry_after=IMPORT_RETRY_AFTER)
    form.key = None  # the job owns the file now
    worker.wake.set()
    location = f"{BASE}/upload/{row['import_id']}"
    return json_response({"importId": row["import_id"], "status": "PENDING", "fileName": row["file_name"],
                          "createdAt": _ts(row["created_at"])}, status=202,
                         headers={"Location": location, "Preference-Applied": "respond-async"})


async def _start(request: web.Request, form: _Form, spec: ImportSpec) -> web.Response:
    """Run the import now (200 with the report), or queue it as a job (202) when the form was stored for one."""
    account_id = principal(request).account_id
    if spec.list_id is not None and not await store.list_exists(get_pool(request.app), account_id, spec.list_id):
        raise NotFound("no such contact list in this account (listId)")
    if form.key is not None:
        return await _queue(request, form, spec)
    assert form.path is not None
    imports = request.app[IMPORTS]
    with imports.slot(account_id):
        return json_response(await run_import(imports.pool, account_id, spec, form.path, _limits(request)))


async def upload_contacts(request: web.Request) -> web.Response:
    """POST /contacts/upload (multipart: file, fileName, removeHead, limit, listId): CSV and other delimited
    text, XLSX, XLS; CREATE_UPDATE by phone number, per-row errors. ``Prefer: respond-async``: a job (202)."""
    form = _form(request)
    try:
        await form.read(request, ("fileName", "removeHead", "limit", "listId"))
        file_name = form.file_name()
        fmt = readers.format_for(file_name)
        if fmt is None:
            raise BadRequest("unsupported file type: the fileName must end in .csv, .txt, .tsv, .xlsx, .xlsm or .xls")
        return await _start(request, form, form.spec(file_name, fmt, header=form.flag("removeHead")))
    finally:
        await form.cleanup()


async def upload_vcard(request: web.Request) -> web.Response:
    """POST /contacts/upload/vcard (multipart: file, fileName ending .vcf, listId, limit): FN, N, TEL, EMAIL.
    ``Prefer: respond-async``: a job (202)."""
    form = _form(request)
    try:
        await form.read(request, ("fileName", "limit", "listId"))
        file_name = form.file_name()
        if not file_name.lower().endswith(".vcf"):
            raise BadRequest("fileName must end in .vcf")
        return await _start(request, form, form.spec(file_name, VCARD, header=False))
    finally:
        await form.cleanup()


async def get_import(request: web.Request) -> web.Response:
    """GET /contacts/upload/{importId}: an import job, with the report once COMPLETED (404: not the account's)."""
    import_id = _id(request.match_info["importId"])
    row = None if import_id is None else await import_jobs.get(get_pool(request.app),
                                                                principal(request).account_id, import_id)
    if row is None:
        raise NotFound("no such import in this account")
    return json_response(import_job_json(row))


# -- lists and memberships -------------------------------------------------------------------------------------

async def create_list(request: web.Request) -> web.Response:
    """POST /contacts/list → 201 with the list."""
    body = await _json_object(request)
    unknown = sorted(set(body) - {"name", "description", "isTest"})
    if unknown:
        raise BadRequest("unknown fields: " + ", ".join(unknown[:10]))
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > fields.MAX_NAME or "\x00" in name:
        raise BadRequest(f"name is required: non-blank text of at most {fields.MAX_NAME} characters")
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_FIELD
                                    or "\x00" in description):
        raise BadRequest(f"description must be text of at most {MAX_FIELD} characters")
    is_test = body.get("isTest", False)
    if not isinstance(is_test, bool):
        raise BadRequest("isTest must be a boolean")
    row = await store.create_list(get_pool(request.app), principal(request).account_id, name, description, is_test)
    return json_response(list_json(row), status=201)


async def find_lists(request: web.Request) -> web.Response:
    """GET /contacts/list?page=&limit=&search=&isTest=&sortBy=&sortOrder= (plain array)."""
    q = request.query
    search, is_test = _text(q, "search"), _bool(q, "isTest")
    page, limit, column, desc = _paging(q, 10, store.LIST_SORTABLE, "id")
    rows = await store.lists(get_pool(request.app), principal(request).account_id, search=search, is_test=is_test,
                             sort_column=column, descending=desc, limit=limit, offset=params.offset(page, limit))
    return json_response([list_json(r) for r in rows])


async def delete_lists(request: web.Request) -> web.Response:
    """DELETE /contacts/list?ids= → {"deleted": n}; the contacts stay."""
    ids = _id_list(request.query, "ids")
    if ids is None:
        raise BadRequest("ids (the lists to delete) is required")
    return json_response({"deleted": await store.delete_lists(get_pool(request.app), principal(request).account_id,
                                                              ids)})


async def list_contacts(request: web.Request) -> web.Response:
    """GET /contacts/list/{listId}/contacts: the list's members, with the GET /contacts filters."""
    list_id = _id(request.match_info["listId"])
    q = request.query
    filters = _filters(q, in_list=True)
    page, limit, column, desc = _paging(q, 10, store.SORTABLE, "fullName")
    priority = _int(q, "sortPriorityListId", 0, 1, MAX_ID) or None
    pool = get_pool(request.app)
    account_id = principal(request).account_id
    if list_id is None or not await store.list_exists(pool, account_id, list_id):
        raise NotFound("no such contact list in this account")
    rows = await store.search(pool, account_id, filters, sort_column=column, descending=desc,
                              priority_list_id=priority, limit=limit, offset=params.offset(page, limit),
                              in_list=list_id)
    return json_response([contact_json(r) for r in rows])


def _id_array(body: dict[str, Any], name: str, *, required: bool = False) -> list[int]:
    if name not in body:
        if required:
            raise BadRequest(f"{name} is required")
        return []
    value = body[name]
    # JSON has one number type: 5.0 is the integer 5 (JSON Schema agrees), so integral floats are ids too.
    if not isinstance(value, list) or len(value) > MAX_IDS or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and 1 <= v <= MAX_ID
            for v in value):
        raise BadRequest(f"{name} must be an array of at most {MAX_IDS} positive integer ids")
    return sorted({int(v) for v in value})


async def _membership_body(request: web.Request) -> tuple[list[int], bool, list[int], list[int]]:
    """listIds, allContacts, contactIds, excludeIdsAllContacts of a bulk membership body (the §5 400 rules),
    with every list checked to be the account's (404 otherwise)."""
    body = await _json_object(request)
    unknown = sorted(set(body) - {"listIds", "allContacts", "contactIds", "excludeIdsAllContacts"})
    if unknown:
        raise BadRequest("unknown fields: " + ", ".join(unknown[:10]))
    list_ids = _id_array(body, "listIds", required=True)
    if not list_ids:
        raise BadRequest("listIds must not be empty")
    all_contacts = body.get("allContacts", False)
    if not isinstance(all_contacts, bool):
        raise BadRequest("allContacts must be a boolean")
    if not all_contacts and "contactIds" not in body:
        raise BadRequest("contactIds is required when allContacts is false")
    contact_ids = _id_array(body, "contactIds")
    exclude = _id_array(body, "excludeIdsAllContacts")
    missing = await store.unknown_lists(get_pool(request.app), principal(request).account_id, list_ids)
    if missing:
        raise NotFound("no such contact list in this account: " + ", ".join(map(str, missing[:20])))
    return list_ids, all_contacts, contact_ids, exclude


async def add_members(request: web.Request) -> web.Response:
    """POST /contacts/list/contacts → 201 {"created": n, "ids": [association ids created]}."""
    list_ids, all_contacts, contact_ids, exclude = await _membership_body(request)
    ids = await store.add_members(get_pool(request.app), principal(request).account_id, list_ids,
                                  all_contacts=all_contacts, contact_ids=contact_ids, exclude_ids=exclude)
    return json_response({"created": len(ids), "ids": ids}, status=201)


async def remove_members(request: web.Request) -> web.Response:
    """DELETE /contacts/list/contacts → {"deleted": n}; neither contacts nor lists are deleted."""
    list_ids, all_contacts, contact_ids, exclude = await _membership_body(request)
    n = await store.remove_members(get_pool(request.app), principal(request).account_id, list_ids,
                                   all_contacts=all_contacts, contact_ids=contact_ids, exclude_ids=exclude)
    return json_response({"deleted": n})


async def delete_membership(request: web.Request) -> web.Response:
    """DELETE /contacts/list/contacts/{id} → 204 (the association id, as returned when it was created)."""
    association = _id(request.match_info["id"])
    if association is None or not await store.delete_membership(get_pool(request.app),
                                                                 principal(request).account_id, association):
        raise NotFound("no such list membership in this account")
    return web.Response(status=204)


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the contact and contact-list routes (fixed paths before the {id} ones)."""
    imports = app[IMPORTS] = ImportSlots(settings.import_pool_max, settings.import_max_per_account)

    limits = app[LIMITS] = readers.Limits(
        max_rows=settings.import_max_rows, xlsx_max_uncompressed=settings.import_xlsx_max_uncompressed_bytes,
        xlsx_max_part=settings.import_xlsx_max_part_bytes, xlsx_max_ratio=settings.import_xlsx_max_ratio,
        xls_max_bytes=settings.import_xls_max_bytes)

    async def import_pool(a: web.Application) -> AsyncIterator[None]:
        await imports.open(settings)
        jobs_pool = await create_pool(settings, min_size=0, max_size=2)  # claims and leases, never an import
        worker = a[IMPORT_WORKER] = ImportWorker(settings, jobs_pool, imports, a[STORE], limits)
        task = asyncio.create_task(worker.run(), name="import-worker")
        yield
        worker.stop()
        await asyncio.wait_for(task, 30)
        await jobs_pool.close()
        await imports.close()

    app.cleanup_ctx.append(import_pool)
    app.router.add_get(BASE, search_contacts)
    app.router.add_post(BASE, create_contact)
    app.router.add_delete(BASE, delete_contacts)
    app.router.add_post(f"{BASE}/upload", upload_contacts)
    app.router.add_post(f"{BASE}/upload/vcard", upload_vcard)
    app.router.add_get(f"{BASE}/upload/{{importId}}", get_import)
    app.router.add_post(LISTS, create_list)
    app.router.add_get(LISTS, find_lists)
    app.router.add_delete(LISTS, delete_lists)
    app.router.add_post(f"{LISTS}/contacts", add_members)
    app.router.add_delete(f"{LISTS}/contacts", remove_members)
    app.router.add_delete(f"{LISTS}/contacts/{{id}}", delete_membership)
    app.router.add_get(f"{LISTS}/{{listId}}/contacts", list_contacts)
    app.router.add_get(f"{BASE}/{{id}}", get_contact)
    app.router.add_put(f"{BASE}/{{id}}", update_contact)
