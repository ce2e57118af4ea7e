"""POST /exports/contacts through the real HTTP API: all contacts, by lists, by ids, tenancy, and every 400."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import aiohttp
import jsonschema
import pytest

from qlara_events.api.spec import build

from support.live import Account, LiveServer, wait_until

P = "/partner-gateway/v1"
EXPORT = f"{P}/exports/contacts"
#: The CSV's columns, in order (the contacts API's JSON names, plus listIds).
HEADER = ["id", "phoneNumber", "email", "firstName", "lastName", "fullName", "gender", "customFields", "isValid",
          "communicationSupported", "isTest", "lastContactType", "lastCampaignType", "listIds", "createdAt",
          "updatedAt"]


async def call(http: aiohttp.ClientSession, server: LiveServer, account: Account, method: str, path: str,
               body: Any = None) -> tuple[int, Any]:
    async with http.request(method, f"{server.url}{path}", json=body, headers=account.headers) as r:
        return r.status, await r.json()


async def contact(http: aiohttp.ClientSession, server: LiveServer, account: Account, **body: Any) -> dict[str, Any]:
    """A contact created through the contacts API (its JSON as the API returns it)."""
    status, created = await call(http, server, account, "POST", f"{P}/contacts", body)
    assert status == 201, created
    return dict(created)


async def contact_list(http: aiohttp.ClientSession, server: LiveServer, account: Account, name: str,
                       members: list[dict[str, Any]]) -> int:
    """A list created through the API, with ``members`` added to it."""
    status, lst = await call(http, server, account, "POST", f"{P}/contacts/list", {"name": name})
    assert status == 201, lst
    if members:
        status, added = await call(http, server, account, "POST", f"{P}/contacts/list/contacts",
                                   {"listIds": [lst["id"]], "contactIds": [m["id"] for m in members]})
        assert status == 201 and added["created"] == len(members), added
    return int(lst["id"])


def conforms(schema_name: str, value: object) -> None:
    """``value`` validates against a component schema of the served OpenAPI document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": build()["components"]}
    jsonschema.Draft202012Validator(schema).validate(value)


async def export(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                 body: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[dict[str, str]]]:
    """Queue a contacts export and fetch its file (see :func:`download`)."""
    status, job = await call(http, server, account, "POST", EXPORT, body)
    assert status == 202, job
    return await download(http, server, account, job)


async def download(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                   job: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[dict[str, str]]]:
    """Await a queued job's completion via GET /exports, then download its signed URL.

    Returns the finished job, the CSV header and its rows.
    """
    assert job["kind"] == "CONTACTS" and job["status"] == "PENDING" and job["isAvailableForDownload"] is False
    conforms("ExportJob", job)

    async def finished() -> dict[str, Any] | None:
        _, jobs = await call(http, server, account, "GET", f"{P}/exports?limit=50")
        found: dict[str, Any] = {j["id"]: j for j in jobs}[job["id"]]
        return found if found["status"] in ("COMPLETED", "FAILED") else None

    done = await wait_until(finished, timeout=60, what=f"contacts export {job['id']}")
    assert done["status"] == "COMPLETED", done
    status, link = await call(http, server, account, "GET", f"{P}/exports/{job['id']}")
    assert status == 200, link
    async with http.get(link["url"].replace(server.settings.base_url, server.url)) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
        assert "contacts.csv" in r.headers["Content-Disposition"]
        text = await r.text()
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert done["rowCount"] == len(rows)
    return done, header, [dict(zip(header, row, strict=True)) for row in rows]


def _ts(api_value: str) -> str:
    """An API timestamp as the CSV writes it: ISO 8601 in UTC with microseconds."""
    return dt.datetime.fromisoformat(api_value).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expected_row(c: dict[str, Any], list_ids: list[int]) -> dict[str, Any]:
    """The CSV row of a contact, from its API JSON (customFields parsed, as the comparison parses the CSV's)."""
    def text(v: Any) -> str:
        return "" if v is None else str(v)

    return {
        "id": str(c["id"]), "phoneNumber": text(c["phoneNumber"]), "email": text(c["email"]),
        "firstName": text(c["firstName"]), "lastName": text(c["lastName"]), "fullName": text(c["fullName"]),
        "gender": text(c["gender"]), "customFields": c["customFields"], "isValid": str(c["isValid"]).lower(),
        "communicationSupported": ";".join(c["communicationSupported"]), "isTest": str(c["isTest"]).lower(),
        "lastContactType": text(c["lastContactType"]), "lastCampaignType": text(c["lastCampaignType"]),
        "listIds": ";".join(str(i) for i in sorted(list_ids)), "createdAt": _ts(c["createdAt"]),
        "updatedAt": _ts(c["updatedAt"]),
    }


def parsed(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """CSV rows with the customFields JSON parsed (jsonb's text spacing is not part of the contract)."""
    return [{**r, "customFields": json.loads(r["customFields"])} for r in rows]


class TestContactsExport:
    """A contacts export holds exactly the selected contacts of the account, once each, by id."""

    async def test_every_contact_of_the_account(self, http: aiohttp.ClientSession, server: LiveServer,
                                                account: Account, other_account: Account) -> None:
        """Neither listIds nor contactIds exports every contact, every column exactly as the API shows it."""
        giulia = await contact(http, server, account, phoneNumber="+393478765432", email="giulia.r@example.com",
                               firstName="Giulia", lastName="Rossi, detta \"Giuly\"", gender="FEMALE",
                               customFields={"city": "Milano", "vip": True, "score": 7})
        email_only = await contact(http, server, account, email="only@example.com", isTest=True)
        fixed = await contact(http, server, account, phoneNumber="+390612345678", firstName="Line\nbreak")
        await contact(http, server, other_account, phoneNumber="+393478765499")  # never in this account's file
        both = await contact_list(http, server, account, "first", [giulia])
        second = await contact_list(http, server, account, "second", [giulia, fixed])
        job, header, rows = await export(http, server, account, {})
        assert header == HEADER and job["parameters"] == {}
        assert parsed(rows) == [expected_row(giulia, [both, second]), expected_row(email_only, []),
                                expected_row(fixed, [second])]
        assert rows[0]["isValid"] == "true" and rows[0]["communicationSupported"] == "SMS"
        assert rows[1]["phoneNumber"] == "" and rows[1]["isTest"] == "true"

    async def test_empty_body_exports_everything(self, http: aiohttp.ClientSession, server: LiveServer,
                                                 account: Account) -> None:
        """A request without a body is the same as {}: every contact."""
        a = await contact(http, server, account, phoneNumber="+393331230001")
        async with http.post(f"{server.url}{EXPORT}", headers=account.headers) as r:
            assert r.status == 202
            job = await r.json()
        assert job["parameters"] == {}
        _, _, rows = await download(http, server, account, job)
        assert [r["id"] for r in rows] == [str(a["id"])]

    async def test_by_list_ids(self, http: aiohttp.ClientSession, server: LiveServer, account: Account) -> None:
        """Members of any selected list, a contact in two of them once, by id; listIds shows all its lists."""
        a, b, c, d = [await contact(http, server, account, phoneNumber=f"+39333124000{i}", firstName=f"N{i}")
                      for i in range(4)]
        l1 = await contact_list(http, server, account, "l1", [b, a])
        l2 = await contact_list(http, server, account, "l2", [b, c])
        l3 = await contact_list(http, server, account, "l3", [d, a])
        await contact_list(http, server, account, "empty", [])
        job, header, rows = await export(http, server, account, {"listIds": [l2, l1, l2]})
        assert header == HEADER and job["parameters"] == {"listIds": sorted([l1, l2])}
        assert parsed(rows) == [expected_row(a, [l1, l3]), expected_row(b, [l1, l2]), expected_row(c, [l2])]

    async def test_by_contact_ids(self, http: aiohttp.ClientSession, server: LiveServer, account: Account) -> None:
        """Exactly the given contacts, deduplicated, by id; an unknown id matches nothing."""
        a, b, c = [await contact(http, server, account, phoneNumber=f"+39333125000{i}") for i in range(3)]
        lst = await contact_list(http, server, account, "l", [c])
        job, _, rows = await export(http, server, account,
                                    {"contactIds": [c["id"], a["id"], c["id"], 9_000_000_000_000]})
        assert job["parameters"] == {"contactIds": sorted([a["id"], c["id"], 9_000_000_000_000])}
        assert parsed(rows) == [expected_row(a, []), expected_row(c, [lst])]
        assert str(b["id"]) not in {r["id"] for r in rows}

    async def test_ids_of_another_account_export_nothing(self, http: aiohttp.ClientSession, server: LiveServer,
                                                          account: Account, other_account: Account) -> None:
        """Another account's list and contact ids select none of its contacts; the file is just the header."""
        theirs = await contact(http, server, other_account, phoneNumber="+393331260001")
        their_list = await contact_list(http, server, other_account, "theirs", [theirs])
        mine = await contact(http, server, account, phoneNumber="+393331260002")
        my_list = await contact_list(http, server, account, "mine", [mine])
        for body in ({"listIds": [their_list]}, {"contactIds": [theirs["id"]]}):
            job, header, rows = await export(http, server, account, body)
            assert (job["rowCount"], header, rows) == (0, HEADER, [])
        _, _, rows = await export(http, server, account, {"listIds": [their_list, my_list]})
        assert parsed(rows) == [expected_row(mine, [my_list])]
        _, _, rows = await export(http, server, account, {"contactIds": [theirs["id"], mine["id"]]})
        assert [r["id"] for r in rows] == [str(mine["id"])]

    async def test_boundary_ids_are_accepted(self, http: aiohttp.ClientSession, server: LiveServer,
                                             account: Account) -> None:
        """The largest 64-bit id and an integral JSON number (5.0, an integer in JSON Schema) are valid ids."""
        _, _, rows = await export(http, server, account, {"listIds": [2**63 - 1, 5.0]})
        assert rows == []

    @pytest.mark.parametrize("body", [
        {"listIds": []}, {"contactIds": []},                                     # empty arrays
        {"listIds": [1], "contactIds": [2]},                                      # both
        {"listIds": ["1"]}, {"listIds": [1.5]}, {"contactIds": [True]}, {"contactIds": [None]},  # not integers
        {"listIds": [0]}, {"contactIds": [-3]}, {"listIds": [2**63]},             # out of range
        {"listIds": 1}, {"listIds": None}, {"contactIds": "1,2"}, {"listIds": {"id": 1}},  # not arrays
        {"listIds": list(range(1, 10_002))},                                      # more than 10,000 ids
        {"listId": [1]},                                                          # unknown (misspelt) field
        [1, 2],                                                                   # not an object
    ], ids=["empty-lists", "empty-contacts", "both", "string", "fraction", "bool", "null-item", "zero", "negative",
            "too-big", "number", "null", "string-array", "object", "too-many", "unknown-field", "not-object"])
    async def test_malformed_requests(self, http: aiohttp.ClientSession, server: LiveServer, account: Account,
                                      body: Any) -> None:
        """Each malformed request is a 400 with the JSON error body, and queues no job."""
        status, err = await call(http, server, account, "POST", EXPORT, body)
        assert status == 400 and err["status"] == 400 and err["error"] == "Bad Request" and err["message"]
        conforms("Error", err)
        assert (await call(http, server, account, "GET", f"{P}/exports"))[1] == []

    async def test_not_json_is_400(self, http: aiohttp.ClientSession, server: LiveServer, account: Account) -> None:
        """A body that is not JSON is a 400 with the JSON error body."""
        async with http.post(f"{server.url}{EXPORT}", data=b"listIds=1",
                             headers={**account.headers, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["status"] == 400
