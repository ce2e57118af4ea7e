"""Contacts and lists (§5): search filters, CRUD, memberships, streamed imports, tenancy, documented errors."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qlara_events.api.spec import build

from support.live import Account, LiveServer

P = "/partner-gateway/v1"
C = f"{P}/contacts"
L = f"{P}/contacts/list"


async def call(http: aiohttp.ClientSession, server: LiveServer, account: Account, method: str, path: str,
               **kw: Any) -> tuple[int, Any]:
    headers = {**account.headers, **kw.pop("headers", {})}
    async with http.request(method, f"{server.url}{path}", headers=headers, **kw) as r:
        body = await r.json() if r.status != 204 else None
        return r.status, body


async def create(http, server, account, **body: Any) -> dict[str, Any]:
    status, contact = await call(http, server, account, "POST", C, json=body)
    assert status == 201, contact
    return contact


async def new_list(http, server, account, name: str = "list", **body: Any) -> dict[str, Any]:
    status, lst = await call(http, server, account, "POST", L, json={"name": name, **body})
    assert status == 201, lst
    return lst


async def upload(http, server, account, data: Any, file_name: str, path: str = f"{C}/upload",
                 **fields: str) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("fileName", file_name)
    for k, v in fields.items():
        form.add_field(k, v)
    form.add_field("file", data, filename=file_name, content_type="application/octet-stream")
    return await call(http, server, account, "POST", path, data=form)


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [i["id"] for i in items]


class TestCreateAndRead:
    """Create, read, partial update: E.164 validation and derived fields."""

    async def test_create_get_and_derived_fields(self, http, server, account) -> None:
        """A valid Italian mobile is stored E.164 with isValid and SMS; fullName joins the names."""
        c = await create(http, server, account, phoneNumber="+393478765432", email="giulia.r@example.com",
                         firstName="Giulia", lastName="Rossi", gender="FEMALE", customFields={"city": "Milano"})
        assert (c["phoneNumber"], c["isValid"], c["communicationSupported"]) == ("+393478765432", True, ["SMS"])
        assert c["fullName"] == "Giulia Rossi" and c["customFields"] == {"city": "Milano"} and c["isTest"] is False
        status, got = await call(http, server, account, "GET", f"{C}/{c['id']}")
        assert status == 200 and got == c

    async def test_invalid_but_e164_number_is_kept_not_valid(self, http, server, account) -> None:
        """An E.164-shaped number libphonenumber rejects is stored with isValid false and no channel."""
        c = await create(http, server, account, phoneNumber="+3912")
        assert (c["isValid"], c["communicationSupported"]) == (False, [])

    async def test_fixed_line_is_valid_without_sms(self, http, server, account) -> None:
        """A Rome fixed-line number is valid but supports no channel."""
        c = await create(http, server, account, phoneNumber="+390612345678")
        assert (c["isValid"], c["communicationSupported"]) == (True, [])

    async def test_email_only_contact(self, http, server, account) -> None:
        """A contact may have only an email."""
        c = await create(http, server, account, email="only@example.com")
        assert c["phoneNumber"] is None and c["isValid"] is False

    @pytest.mark.parametrize("body", [
        {}, {"firstName": "x"}, {"phoneNumber": "393331234567"}, {"phoneNumber": "+39 333 1234567"},
        {"email": "not-an-email"}, {"phoneNumber": "+393331234567", "gender": "male"},
        {"phoneNumber": "+393331234567", "isValid": True}, {"phoneNumber": "+393331234567", "nope": 1},
        {"phoneNumber": "+393331234567", "customFields": {"a": [1]}}, {"phoneNumber": "+393331234567", "firstName": 5},
    ])
    async def test_create_rejections(self, http, server, account, body) -> None:
        """Missing phone and email, malformed phone or email, bad enum, read-only or unknown fields are 400."""
        status, err = await call(http, server, account, "POST", C, json=body)
        assert status == 400 and err["status"] == 400 and err["message"]

    async def test_not_json_is_400(self, http, server, account) -> None:
        """A body that is not a JSON object is 400."""
        status, _ = await call(http, server, account, "POST", C, data=b"[1]",
                               headers={**account.headers, "Content-Type": "application/json"})
        assert status == 400

    async def test_duplicate_phone_is_409(self, http, server, account) -> None:
        """The phone number is a contact's identity in the account: a second create is 409."""
        await create(http, server, account, phoneNumber="+393331110001")
        status, err = await call(http, server, account, "POST", C, json={"phoneNumber": "+393331110001"})
        assert status == 409 and err["error"] == "Conflict"

    async def test_partial_update(self, http, server, account) -> None:
        """PUT changes only what is sent; a new phone recomputes isValid and channels; customFields merge."""
        c = await create(http, server, account, phoneNumber="+393331110002", firstName="Anna", lastName="Bianchi",
                         customFields={"a": "1", "b": "2"})
        status, u = await call(http, server, account, "PUT", f"{C}/{c['id']}",
                               json={"lastName": "Verdi", "customFields": {"b": None, "c": True}})
        assert status == 200 and (u["firstName"], u["lastName"], u["fullName"]) == ("Anna", "Verdi", "Anna Verdi")
        assert u["customFields"] == {"a": "1", "c": True} and u["phoneNumber"] == "+393331110002"
        status, u = await call(http, server, account, "PUT", f"{C}/{c['id']}", json={"phoneNumber": "+3912"})
        assert status == 200 and (u["isValid"], u["communicationSupported"]) == (False, [])
        status, u = await call(http, server, account, "PUT", f"{C}/{c['id']}", json={"phoneNumber": "+447911123456"})
        assert status == 200 and (u["isValid"], u["communicationSupported"]) == (True, ["SMS"])

    async def test_update_errors(self, http, server, account) -> None:
        """PUT: invalid field 400, removing both phone and email 400, a taken phone 409, unknown id 404."""
        a = await create(http, server, account, phoneNumber="+393331110003")
        await create(http, server, account, phoneNumber="+393331110004")
        assert (await call(http, server, account, "PUT", f"{C}/{a['id']}", json={"gender": 3}))[0] == 400
        assert (await call(http, server, account, "PUT", f"{C}/{a['id']}", json={"phoneNumber": None}))[0] == 400
        assert (await call(http, server, account, "PUT", f"{C}/{a['id']}",
                           json={"phoneNumber": "+393331110004"}))[0] == 409
        for bad in ("999999999999", "abc", "99999999999999999999999"):
            assert (await call(http, server, account, "PUT", f"{C}/{bad}", json={"firstName": "x"}))[0] == 404
            assert (await call(http, server, account, "GET", f"{C}/{bad}"))[0] == 404


class TestSearch:
    """GET /contacts: every filter, sorting and paging."""

    async def test_filters(self, http, server, account) -> None:
        """Each filter narrows the result to the contacts it describes."""
        a = await create(http, server, account, phoneNumber="+393331120001", firstName="Zoe", lastName="Alfa",
                         email="Zoe@Example.com", gender="FEMALE", isTest=True)
        b = await create(http, server, account, phoneNumber="+390612345670", firstName="Bruno", lastName="Beta",
                         gender="MALE")
        c = await create(http, server, account, email="carla@example.org", firstName="Carla")
        lst = await new_list(http, server, account)
        await call(http, server, account, "POST", f"{L}/contacts", json={"listIds": [lst["id"]], "contactIds": [a["id"]]})

        async def found(**params: str) -> list[int]:
            status, body = await call(http, server, account, "GET", C, params=params)
            assert status == 200, body
            return sorted(ids(body))

        assert await found() == sorted([a["id"], b["id"], c["id"]])
        assert await found(listIds=str(lst["id"])) == [a["id"]]
        assert await found(notListIds=str(lst["id"])) == sorted([b["id"], c["id"]])
        assert await found(search="EXAMPLE.ORG") == [c["id"]]
        assert await found(search="bet") == [b["id"]]
        assert await found(search="%") == []
        assert await found(gender="MALE") == [b["id"]]
        assert await found(isValid="false") == [c["id"]]
        assert await found(communicationSupported="SMS") == [a["id"]]
        assert await found(communicationSupported="RCS") == []
        assert await found(isTest="true") == [a["id"]]
        assert await found(phoneNumber="+39 333 112 0001") == [a["id"]]
        assert await found(email="zoe@example.com") == [a["id"]]

    async def test_sorting_paging_and_priority(self, http, server, account) -> None:
        """Default sort is fullName ascending; page/limit slice it; priority-list members come first."""
        names = ["Delta", "Alpha", "Charlie", "Bravo"]
        made = {n: await create(http, server, account, phoneNumber=f"+39333113000{i}", firstName=n)
                for i, n in enumerate(names)}
        status, body = await call(http, server, account, "GET", C)
        assert [x["firstName"] for x in body] == sorted(names)
        status, body = await call(http, server, account, "GET", C, params={"sortOrder": "desc", "limit": "2",
                                                                            "page": "1"})
        assert [x["firstName"] for x in body] == ["Bravo", "Alpha"]
        lst = await new_list(http, server, account)
        await call(http, server, account, "POST", f"{L}/contacts",
                   json={"listIds": [lst["id"]], "contactIds": [made["Delta"]["id"]]})
        status, body = await call(http, server, account, "GET", C, params={"sortPriorityListId": str(lst["id"])})
        assert [x["firstName"] for x in body] == ["Delta", "Alpha", "Bravo", "Charlie"]
        status, body = await call(http, server, account, "GET", C, params={"sortBy": "id", "sortOrder": "desc"})
        assert status == 200 and ids(body) == sorted(ids(body), reverse=True)

    @pytest.mark.parametrize("params", [
        {"page": "-1"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"sortBy": "nope"},
        {"sortOrder": "up"}, {"listIds": "1,,2"}, {"notListIds": "a"}, {"isValid": "yes"}, {"gender": "male"},
        {"communicationSupported": "FAX"}, {"sortPriorityListId": "0"}, {"search": "a\x00b"},
    ])
    async def test_invalid_params(self, http, server, account, params) -> None:
        """Invalid paging, sorting or filters are 400."""
        status, err = await call(http, server, account, "GET", C, params=params)
        assert status == 400 and err["status"] == 400


class TestDelete:
    """DELETE /contacts: ids, notIds, ids wins, memberships go, the other account is untouched."""

    async def test_ids_and_not_ids(self, http, server, account, other_account) -> None:
        """ids deletes those; notIds deletes every other; ids wins over notIds; nothing without either."""
        a, b, c, d = [await create(http, server, account, phoneNumber=f"+39333114000{i}") for i in range(4)]
        theirs = await create(http, server, other_account, phoneNumber="+393331140000")
        lst = await new_list(http, server, account)
        await call(http, server, account, "POST", f"{L}/contacts", json={"listIds": [lst["id"]], "contactIds": [a["id"]]})
        assert await call(http, server, account, "DELETE", C) == (200, {"deleted": 0})
        status, body = await call(http, server, account, "DELETE", C,
                                  params={"ids": f"{a['id']},{theirs['id']}", "notIds": str(b["id"])})
        assert (status, body) == (200, {"deleted": 1})
        status, body = await call(http, server, account, "DELETE", C, params={"notIds": str(b["id"])})
        assert (status, body) == (200, {"deleted": 2})
        status, body = await call(http, server, account, "GET", C)
        assert ids(body) == [b["id"]]
        assert (await call(http, server, other_account, "GET", f"{C}/{theirs['id']}"))[0] == 200
        status, members = await call(http, server, account, "GET", f"{L}/{lst['id']}/contacts")
        assert members == [] and c and d
        assert (await call(http, server, account, "DELETE", C, params={"ids": "x"}))[0] == 400


class TestLists:
    """Lists: create, find, delete; memberships: bulk add/remove, single removal, list members."""

    async def test_create_find_delete(self, http, server, account) -> None:
        """A list is created with 201, found with its count and search, deleted without its contacts."""
        lst = await new_list(http, server, account, "Clienti Milano 2026", description="Imported from CRM",
                             isTest=False)
        assert (lst["name"], lst["description"], lst["isTest"], lst["contactCount"]) == \
            ("Clienti Milano 2026", "Imported from CRM", False, 0)
        other = await new_list(http, server, account, "Test list", isTest=True)
        c = await create(http, server, account, phoneNumber="+393331150001")
        await call(http, server, account, "POST", f"{L}/contacts", json={"listIds": [lst["id"]], "contactIds": [c["id"]]})
        status, found = await call(http, server, account, "GET", L, params={"search": "milano"})
        assert status == 200 and [(x["id"], x["contactCount"]) for x in found] == [(lst["id"], 1)]
        status, found = await call(http, server, account, "GET", L, params={"isTest": "true"})
        assert ids(found) == [other["id"]]
        status, found = await call(http, server, account, "GET", L, params={"sortBy": "name", "sortOrder": "desc",
                                                                             "limit": "1"})
        assert ids(found) == [other["id"]]
        assert await call(http, server, account, "DELETE", L, params={"ids": f"{lst['id']},{other['id']}"}) == \
            (200, {"deleted": 2})
        assert (await call(http, server, account, "GET", f"{C}/{c['id']}"))[0] == 200
        assert (await call(http, server, account, "GET", f"{L}/{lst['id']}/contacts"))[0] == 404

    @pytest.mark.parametrize(("method", "path", "kw"), [
        ("POST", L, {"json": {}}), ("POST", L, {"json": {"name": ""}}), ("POST", L, {"json": {"name": "a", "isTest": 1}}),
        ("POST", L, {"json": {"name": "a", "x": 1}}), ("GET", L, {"params": {"limit": "0"}}),
        ("GET", L, {"params": {"sortBy": "size"}}), ("DELETE", L, {}), ("DELETE", L, {"params": {"ids": ""}}),
    ])
    async def test_list_errors(self, http, server, account, method, path, kw) -> None:
        """Missing or invalid name, bad paging, missing ids are 400."""
        assert (await call(http, server, account, method, path, **kw))[0] == 400

    async def test_memberships(self, http, server, account) -> None:
        """Bulk add creates each membership once; allContacts with exclusions; removal by both modes and by id."""
        cs = [await create(http, server, account, phoneNumber=f"+39333116000{i}", firstName=f"N{i}") for i in range(4)]
        l1, l2 = await new_list(http, server, account, "one"), await new_list(http, server, account, "two")
        status, made = await call(http, server, account, "POST", f"{L}/contacts",
                                  json={"listIds": [l1["id"]], "allContacts": False,
                                        "contactIds": [cs[0]["id"], cs[1]["id"]]})
        assert status == 201 and made["created"] == 2 and len(made["ids"]) == 2
        status, made = await call(http, server, account, "POST", f"{L}/contacts",
                                  json={"listIds": [l1["id"], l2["id"]], "allContacts": True,
                                        "excludeIdsAllContacts": [cs[3]["id"]]})
        assert status == 201 and made["created"] == 1 + 3  # l1 gains cs[2]; l2 gains cs[0..2]
        status, members = await call(http, server, account, "GET", f"{L}/{l1['id']}/contacts")
        assert sorted(ids(members)) == sorted(c["id"] for c in cs[:3])
        association = next(m["associationId"] for m in members if m["id"] == cs[0]["id"])
        status, members = await call(http, server, account, "GET", f"{L}/{l1['id']}/contacts",
                                     params={"search": "n1", "lastContactType": "SMS"})
        assert status == 200 and members == []  # no campaign has contacted anyone yet
        status, members = await call(http, server, account, "GET", f"{L}/{l1['id']}/contacts", params={"search": "n1"})
        assert ids(members) == [cs[1]["id"]]
        assert (await call(http, server, account, "DELETE", f"{L}/contacts/{association}"))[0] == 204
        assert (await call(http, server, account, "DELETE", f"{L}/contacts/{association}"))[0] == 404
        status, body = await call(http, server, account, "DELETE", f"{L}/contacts",
                                  json={"listIds": [l2["id"]], "allContacts": True,
                                        "excludeIdsAllContacts": [cs[0]["id"]]})
        assert (status, body) == (200, {"deleted": 2})
        status, body = await call(http, server, account, "DELETE", f"{L}/contacts",
                                  json={"listIds": [l1["id"]], "contactIds": [cs[1]["id"]]})
        assert (status, body) == (200, {"deleted": 1})
        status, found = await call(http, server, account, "GET", L)
        assert {x["id"]: x["contactCount"] for x in found} == {l1["id"]: 1, l2["id"]: 1}

    @pytest.mark.parametrize("body", [
        {"listIds": [], "contactIds": [1]}, {"contactIds": [1]}, {"listIds": [1]},
        {"listIds": [1], "allContacts": False}, {"listIds": [1], "contactIds": ["a"]},
        {"listIds": [1], "allContacts": "yes", "contactIds": [1]}, {"listIds": [1], "contactIds": None},
    ])
    async def test_membership_400_rules(self, http, server, account, body) -> None:
        """Empty listIds, or contactIds missing while allContacts is false, or a bad type: 400 for add and remove."""
        for method in ("POST", "DELETE"):
            assert (await call(http, server, account, method, f"{L}/contacts", json=body))[0] == 400

    async def test_other_account_is_404(self, http, server, account, other_account) -> None:
        """Another account's contacts, lists and memberships are 404 and never touched."""
        c = await create(http, server, account, phoneNumber="+393331170001")
        lst = await new_list(http, server, account)
        _, made = await call(http, server, account, "POST", f"{L}/contacts",
                             json={"listIds": [lst["id"]], "contactIds": [c["id"]]})
        o = other_account
        assert (await call(http, server, o, "GET", f"{C}/{c['id']}"))[0] == 404
        assert (await call(http, server, o, "PUT", f"{C}/{c['id']}", json={"firstName": "x"}))[0] == 404
        assert (await call(http, server, o, "GET", f"{L}/{lst['id']}/contacts"))[0] == 404
        assert (await call(http, server, o, "DELETE", f"{L}/contacts/{made['ids'][0]}"))[0] == 404
        for method in ("POST", "DELETE"):
            assert (await call(http, server, o, method, f"{L}/contacts",
                               json={"listIds": [lst["id"]], "allContacts": True}))[0] == 404
        their_contact = await create(http, server, o, phoneNumber="+393331170002")
        status, made = await call(http, server, account, "POST", f"{L}/contacts",
                                  json={"listIds": [lst["id"]], "contactIds": [their_contact["id"]]})
        assert (status, made["created"]) == (201, 0)  # another account's contact is never added
        assert await call(http, server, o, "DELETE", L, params={"ids": str(lst["id"])}) == (200, {"deleted": 0})
        assert await call(http, server, o, "DELETE", C, params={"ids": str(c["id"])}) == (200, {"deleted": 0})
        status, found = await call(http, server, o, "GET", C, params={"listIds": str(lst["id"])})
        assert found == []
        assert (await upload(http, server, o, b"phone\n+393331170003\n", "a.csv", listId=str(lst["id"])))[0] == 404


def xlsx(rows: list[list[Any]]) -> bytes:
    """An XLSX workbook of ``rows``."""
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet()
    for r in rows:
        ws.append(r)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def xls(rows: list[list[Any]]) -> bytes:
    """A legacy XLS (BIFF8) workbook of ``rows``."""
    import xlwt  # type: ignore[import-untyped]  # -- test-only writer without type information

    wb = xlwt.Workbook()
    ws = wb.add_sheet("contacts")
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            ws.write(i, j, value)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


class TestImport:
    """POST /contacts/upload: formats, CREATE_UPDATE by phone, per-row errors, list, preview, 400s."""

    async def test_csv_create_update_errors_and_list(self, http, server, account) -> None:
        """Semicolon CSV with aliased headers: created, updated by phone, row errors, blanks skipped, list filled."""
        existing = await create(http, server, account, phoneNumber="+393331180001", firstName="Old", email="o@x.io")
        lst = await new_list(http, server, account)
        data = (b"First Name;Cognome;Phone;E-mail;Sex;Notes\n"
                b"Anna;Rossi;+39 333 118 0001;;F;vip\n"          # updates existing (email kept)
                b"Bruno;Verdi;00393331180002;b@x.io;m;\n"        # created
                b";;;;;\n"                                       # blank: skipped
                b"Carla;;not a phone;;;\n"                       # error
                b"Dario;;;d@x.io;X;\n"                           # error (gender)
                b"Elena;;;e@x.io;;\n"                            # created, email only
                b"Bruno;Verdi2;393331180002;;;\n")      # digits only: same number, updates row 3's contact
        status, rep = await upload(http, server, account, data, "crm.csv", listId=str(lst["id"]), limit="2")
        assert status == 200, rep
        assert rep["summary"] == {"total": 7, "created": 2, "updated": 2, "errors": 2, "skipped": 1}
        assert [e["row"] for e in rep["errors"]] == [5, 6] and "E.164" in rep["errors"][0]["reason"]
        assert rep["header"] is True and rep["ignoredColumns"] == ["Notes"] and rep["format"] == "CSV"
        assert rep["mappedColumns"] == ["firstName", "lastName", "phoneNumber", "email", "gender"]
        assert [p["row"] for p in rep["preview"]] == [2, 3] and rep["message"] == "File parsed successfully"
        status, got = await call(http, server, account, "GET", f"{C}/{existing['id']}")
        assert (got["firstName"], got["lastName"], got["email"], got["gender"]) == ("Anna", "Rossi", "o@x.io", "FEMALE")
        status, members = await call(http, server, account, "GET", f"{L}/{lst['id']}/contacts", params={"limit": "100"})
        assert status == 200 and len(members) == 3
        status, found = await call(http, server, account, "GET", C, params={"phoneNumber": "+393331180002"})
        assert [(x["lastName"], x["email"]) for x in found] == [("Verdi2", "b@x.io")]
        status, rep = await upload(http, server, account, data, "crm.csv")
        assert rep["summary"]["created"] == 0 and rep["summary"]["updated"] == 4  # idempotent re-import

    async def test_headerless_and_tsv(self, http, server, account) -> None:
        """removeHead=false reads positional columns; a .tsv is tab-separated."""
        status, rep = await upload(http, server, account, b"+393331190001,Ada,Lovelace\n", "x.csv", removeHead="false")
        assert status == 200 and rep["summary"]["created"] == 1 and rep["header"] is False
        status, rep = await upload(http, server, account, b"phoneNumber\tfirstName\n+393331190002\tGrace\n", "x.tsv")
        assert status == 200 and rep["preview"][0]["firstName"] == "Grace"
        status, rep = await upload(http, server, account, b"a,b\n1,2\n", "x.csv", removeHead="true")
        assert status == 400 and "header" in rep["message"]

    async def test_cp1252_file(self, http, server, account) -> None:
        """A Windows-1252 file (Excel's default) decodes its accents."""
        status, rep = await upload(http, server, account, "phone;name\n+393331190003;Nicolò Bà\n".encode("cp1252"),
                                   "w.csv")
        assert status == 200 and rep["preview"][0]["firstName"] == "Nicolò" and rep["preview"][0]["lastName"] == "Bà"

    async def test_xlsx(self, http, server, account) -> None:
        """XLSX: numeric phone cells lose their '+' and '.0' but are read as international numbers."""
        data = xlsx([["Phone Number", "First name", "Email"], [393331200001, "Ugo", None],
                     ["+39 333 120 0002", "Ivo", "ivo@x.io"], [None, None, None], ["bad", "Zed", None]])
        status, rep = await upload(http, server, account, data, "book.XLSX")
        assert status == 200, rep
        assert rep["format"] == "XLSX" and rep["summary"] == {"total": 4, "created": 2, "updated": 0, "errors": 1,
                                                              "skipped": 1}
        assert rep["preview"][0]["phoneNumber"] == "+393331200001"

    async def test_xls(self, http, server, account) -> None:
        """XLS (BIFF) is read with xlrd; a file that is not one is a 400."""
        status, rep = await upload(http, server, account, xls([["Phone", "Name"], [393331200005, "Ugo Foscolo"],
                                                                ["+393331200006", "Ada"]]), "legacy.xls")
        assert status == 200, rep
        assert rep["format"] == "XLS" and rep["summary"]["created"] == 2
        status, rep = await upload(http, server, account, b"phone\n+393331200009\n", "legacy.xls")
        assert status == 400 and "XLS" in rep["message"]

    @pytest.mark.parametrize(("data", "name", "fields"), [
        (b"phone\n+393331210001\n", "contacts.pdf", {}), (b"PK\x03\x04garbage", "c.xlsx", {}),
        (b"not a zip", "c.xlsx", {}), (b"", "c.csv", {}), (b"phone\n+393331210001\n", "c.csv", {"limit": "-1"}),
        (b"phone\n+393331210001\n", "c.csv", {"removeHead": "maybe"}),
        (b"phone\n+393331210001\n", "c.csv", {"listId": "abc"}),
    ])
    async def test_rejections(self, http, server, account, data, name, fields) -> None:
        """Unsupported extension, corrupt workbook, empty file, bad form fields are 400."""
        status, err = await upload(http, server, account, data, name, **fields)
        assert status == 400 and err["status"] == 400

    async def test_missing_parts(self, http, server, account) -> None:
        """No file part, no fileName part, or not multipart: 400; an unknown listId: 404."""
        form = aiohttp.FormData()
        form.add_field("fileName", "a.csv")
        assert (await call(http, server, account, "POST", f"{C}/upload", data=form))[0] == 400
        form = aiohttp.FormData()
        form.add_field("file", b"phone\n+393331210002\n", filename="a.csv")
        assert (await call(http, server, account, "POST", f"{C}/upload", data=form))[0] == 400
        assert (await call(http, server, account, "POST", f"{C}/upload", json={"file": "x"}))[0] == 400
        assert (await upload(http, server, account, b"phone\n+393331210002\n", "a.csv", listId="999999999"))[0] == 404

    async def test_100k_rows_streamed(self, http, server, account) -> None:
        """100,000 CSV rows, streamed in the request, import with per-row errors, right counts, bounded memory."""
        rows = 100_000
        bad_every = 97  # every 97th row has a malformed phone number

        async def body() -> AsyncIterator[bytes]:
            yield b"firstName,lastName,phoneNumber,email\n"
            chunk = []
            for i in range(rows):
                phone = "12ab" if i % bad_every == 0 else f"+39333{i:07d}"
                chunk.append(f"Name{i},Surname{i},{phone},u{i}@example.com\n")
                if len(chunk) == 2000:
                    yield "".join(chunk).encode()
                    chunk = []
            if chunk:
                yield "".join(chunk).encode()

        errors = len(range(0, rows, bad_every))
        before_rss = _rss_kib("VmRSS")
        _reset_peak_rss()
        started = time.perf_counter()
        status, rep = await upload(http, server, account, body(), "big.csv", limit="5")
        elapsed = time.perf_counter() - started
        growth_mib = (_rss_kib("VmHWM") - before_rss) / 1024
        assert status == 200, rep
        assert rep["summary"] == {"total": rows, "created": rows - errors, "updated": 0, "errors": errors,
                                  "skipped": 0}
        assert errors > 1000 and len(rep["errors"]) == 1000 and rep["errorsTruncated"] is True  # list capped
        assert "E.164" in rep["errors"][0]["reason"]
        assert [e["row"] for e in rep["errors"][:3]] == [2, 2 + bad_every, 2 + 2 * bad_every]
        assert len(rep["preview"]) == 5
        status, found = await call(http, server, account, "GET", C, params={"phoneNumber": "+393330099999"})
        assert [x["email"] for x in found] == ["u99999@example.com"]
        print(f"100,000-row CSV import: {elapsed:.1f} s, peak RSS growth of the server process {growth_mib:.1f} MiB")
        # No bound on the time here: the figure (rows/s against COPY of the same rows, CPU per 1,000 rows) is the
        # benchmark scenario contacts_import (benchmarks/contacts_import.py, benchmarks/README.md), which sends
        # this request; the pytest timeout catches a hang. The memory bound stays: 30x the 4.4 MiB measured,
        # and a tenth of what holding the rows would take.
        assert growth_mib < 150, f"peak RSS grew by {growth_mib:.0f} MiB: rows were held in memory"


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM (peak) of this process, which also runs the server, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs), so the peak measured is this test's."""
    Path("/proc/self/clear_refs").write_text("5")


class TestVcard:
    """POST /contacts/upload/vcard: FN/N/TEL/EMAIL, folded lines, CREATE_UPDATE, 400s."""

    VCF = ("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Maria Grazia Neri\r\nN:Neri;Maria Grazia;;;\r\n"
           "TEL;TYPE=HOME:+39 06 1234 5678\r\nTEL;TYPE=CELL:+39 333 1\r\n 22 0001\r\n"
           "EMAIL:maria@example.com\r\nEND:VCARD\r\n"
           "BEGIN:VCARD\r\nVERSION:2.1\r\nFN:Solo Nome\r\nEMAIL;INTERNET:solo@example.com\r\nEND:VCARD\r\n"
           "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Nobody\r\nEND:VCARD\r\n")

    async def test_import(self, http, server, account) -> None:
        """Two cards import (the CELL number preferred, folded line joined); a card without phone or email is an error."""
        status, rep = await upload(http, server, account, self.VCF.encode(), "phone.vcf", path=f"{C}/upload/vcard")
        assert status == 200, rep
        assert rep["summary"] == {"total": 3, "created": 2, "updated": 0, "errors": 1, "skipped": 0}
        assert rep["errors"][0]["row"] == 3 and rep["format"] == "VCARD"
        first = rep["preview"][0]
        assert (first["phoneNumber"], first["firstName"], first["lastName"]) == ("+393331220001", "Maria Grazia", "Neri")
        assert (rep["preview"][1]["firstName"], rep["preview"][1]["lastName"]) == ("Solo", "Nome")
        status, rep = await upload(http, server, account, self.VCF.encode(), "phone.vcf", path=f"{C}/upload/vcard")
        assert rep["summary"]["updated"] == 2

    @pytest.mark.parametrize(("data", "name"), [
        (b"BEGIN:VCARD\nFN:x\n", "a.vcf"), (b"hello", "a.vcf"), (b"BEGIN:VCARD\nEND:VCARD\n", "a.csv"),
    ])
    async def test_rejections(self, http, server, account, data, name) -> None:
        """An unterminated card, a non-vCard file, or a name not ending .vcf is 400."""
        status, err = await upload(http, server, account, data, name, path=f"{C}/upload/vcard")
        assert status == 400 and err["status"] == 400


class TestSpec:
    """The document describes what the contact endpoints return."""

    async def test_responses_validate(self, http, server, account) -> None:
        """Contact, list, list member and import report validate against their schemas."""
        import jsonschema

        spec = build()

        def check(name: str, value: object) -> None:
            jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                             "components": spec["components"]}).validate(value)

        c = await create(http, server, account, phoneNumber="+393331230001", firstName="S")
        check("Contact", c)
        lst = await new_list(http, server, account)
        check("ContactList", lst)
        await call(http, server, account, "POST", f"{L}/contacts", json={"listIds": [lst["id"]], "contactIds": [c["id"]]})
        _, members = await call(http, server, account, "GET", f"{L}/{lst['id']}/contacts")
        check("ListContact", members[0])
        _, rep = await upload(http, server, account, b"phone\n+393331230002\nx\n", "a.csv")
        check("ContactImport", rep)
