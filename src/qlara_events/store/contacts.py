"""Contacts, contact lists and memberships, always scoped to one account (Qlara §5).

Every statement is a named constant; the only assembled SQL is the ORDER BY column and the SET list of a
partial update, both taken from the fixed maps below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import asyncpg

from qlara_events.contacts.rows import ImportRow
from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"

COLUMNS: Final = ("c.contact_id, c.phone_number, c.email, c.first_name, c.last_name, c.full_name, c.gender,"
                  " c.custom_fields, c.is_valid, c.communication_supported, c.is_test, c.last_contact_type,"
                  " c.last_campaign_type, c.created_at, c.updated_at")
#: sortBy -> column of GET /contacts and GET /contacts/list/{listId}/contacts.
SORTABLE: Final = {"fullName": "c.full_name", "firstName": "c.first_name", "lastName": "c.last_name",
                   "phoneNumber": "c.phone_number", "email": "c.email", "id": "c.contact_id",
                   "createdAt": "c.created_at", "updatedAt": "c.updated_at"}
#: Body field -> column of a partial update (custom_fields is merged, see UPDATE below).
UPDATABLE: Final = {"phoneNumber": "phone_number", "email": "email", "firstName": "first_name",
                    "lastName": "last_name", "gender": "gender", "isValid": "is_valid",
                    "communicationSupported": "communication_supported", "isTest": "is_test",
                    "customFields": "custom_fields"}
LIST_SORTABLE: Final = {"id": "l.list_id", "name": "l.name", "createdAt": "l.created_at"}


@dataclasses.dataclass(frozen=True)
class Filters:
    """The search filters of §5 (None = not filtered)."""

    list_ids: list[int] | None = None
    not_list_ids: list[int] | None = None
    search: str | None = None
    gender: str | None = None
    is_valid: bool | None = None
    channel: str | None = None
    is_test: bool | None = None
    phone_number: str | None = None
    email: str | None = None
    last_contact_type: str | None = None
    last_campaign_type: str | None = None

    def args(self) -> tuple[Any, ...]:
        """Parameters $2..$12 of _WHERE (search becomes a LIKE pattern on the lower-cased search text)."""
        pattern = None
        if self.search is not None:
            escaped = self.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
        return (self.list_ids, self.not_list_ids, pattern, self.gender, self.is_valid, self.channel, self.is_test,
                self.phone_number, self.email, self.last_contact_type, self.last_campaign_type)


_WHERE: Final = """
c.account_id = $1
and ($2::bigint[] is null or exists (select 1 from contact_list_members m
                                     where m.contact_id = c.contact_id and m.list_id = any($2)))
and ($3::bigint[] is null or not exists (select 1 from contact_list_members m
                                         where m.contact_id = c.contact_id and m.list_id = any($3)))
and ($4::text is null or c.search_text like $4)
and ($5::text is null or c.gender = $5)
and ($6::bool is null or c.is_valid = $6)
and ($7::text is null or $7 = any(c.communication_supported))
and ($8::bool is null or c.is_test = $8)
and ($9::text is null or c.phone_number = $9)
and ($10::text is null or lower(c.email) = lower($10))
and ($11::text is null or c.last_contact_type = $11)
and ($12::text is null or c.last_campaign_type = $12)
"""
#: Members of the sortPriorityListId ($13) first.
_PRIORITY: Final = ("($13::bigint is not null and exists (select 1 from contact_list_members p"
                    " where p.contact_id = c.contact_id and p.list_id = $13)) desc")
SEARCH: Final = f"select {COLUMNS} from contacts c where {_WHERE} order by {_PRIORITY}, {{order}} limit $14 offset $15"
SEARCH_IN_LIST: Final = (f"select {COLUMNS}, lm.id as association_id from contacts c join contact_list_members lm"
                         f" on lm.contact_id = c.contact_id and lm.list_id = $16 where {_WHERE}"
                         f" order by {_PRIORITY}, {{order}} limit $14 offset $15")
GET: Final = f"select {COLUMNS} from contacts c where c.account_id = $1 and c.contact_id = $2"
INSERT: Final = (
    "insert into contacts as c (account_id, phone_number, email, first_name, last_name, gender, custom_fields,"
    " is_valid, communication_supported, is_test) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    f" returning {COLUMNS}")
#: {sets} is built from UPDATABLE only; custom fields merge (a null value removes the key).
UPDATE: Final = (f"update contacts as c set {{sets}}, updated_at = now() where c.account_id = $1 and c.contact_id = $2"
                 f" returning {COLUMNS}")
MERGE_CUSTOM: Final = "custom_fields = jsonb_strip_nulls(c.custom_fields || ${n}::jsonb)"
DELETE_IDS: Final = "delete from contacts where account_id = $1 and contact_id = any($2::bigint[])"
DELETE_ALL_EXCEPT: Final = "delete from contacts where account_id = $1 and not (contact_id = any($2::bigint[]))"

#: One bulk statement per import batch: create, or update the contact with the same phone number. Empty cells
#: (nulls) keep what the contact had; validity and channels follow the (possibly changed) number.
UPSERT_BY_PHONE: Final = """
insert into contacts as c (account_id, phone_number, email, first_name, last_name, gender, is_valid,
                           communication_supported)
select $1, t.phone, t.email, t.first_name, t.last_name, t.gender, t.is_valid, string_to_array(t.channels, ',')
from unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[], $8::text[])
     as t(phone, email, first_name, last_name, gender, is_valid, channels)
on conflict (account_id, phone_number) do update set
    email = coalesce(excluded.email, c.email), first_name = coalesce(excluded.first_name, c.first_name),
    last_name = coalesce(excluded.last_name, c.last_name), gender = coalesce(excluded.gender, c.gender),
    is_valid = excluded.is_valid, communication_supported = excluded.communication_supported, updated_at = now()
returning c.contact_id, (c.xmax = 0) as inserted
"""
#: Rows without a phone number are matched by email among the account's contacts without one.
UPSERT_BY_EMAIL: Final = """
insert into contacts as c (account_id, email, first_name, last_name, gender)
select $1, t.email, t.first_name, t.last_name, t.gender
from unnest($2::text[], $3::text[], $4::text[], $5::text[]) as t(email, first_name, last_name, gender)
on conflict (account_id, lower(email)) where phone_number is null do update set
    first_name = coalesce(excluded.first_name, c.first_name), last_name = coalesce(excluded.last_name, c.last_name),
    gender = coalesce(excluded.gender, c.gender), updated_at = now()
returning c.contact_id, (c.xmax = 0) as inserted
"""

LIST_COLUMNS: Final = ("l.list_id, l.name, l.description, l.is_test, l.created_at, l.updated_at,"
                       " (select count(*) from contact_list_members m where m.list_id = l.list_id) as contact_count")
CREATE_LIST: Final = ("insert into contact_lists as l (account_id, name, description, is_test) values ($1, $2, $3, $4)"
                      f" returning {LIST_COLUMNS}")
LISTS: Final = (f"select {LIST_COLUMNS} from contact_lists l where l.account_id = $1"
                " and ($2::text is null or l.name ilike $2 or l.description ilike $2)"
                " and ($3::bool is null or l.is_test = $3) order by {order} limit $4 offset $5")
LIST_EXISTS: Final = "select exists (select 1 from contact_lists where account_id = $1 and list_id = $2)"
KNOWN_LISTS: Final = "select list_id from contact_lists where account_id = $1 and list_id = any($2::bigint[])"
DELETE_LISTS: Final = "delete from contact_lists where account_id = $1 and list_id = any($2::bigint[])"
#: Memberships for lists $2 (already checked to be the account's): every contact of the account except $5
#: when $3 (allContacts), else the account's contacts among $4. Existing memberships are kept as they are.
ADD_MEMBERS: Final = """
insert into contact_list_members (list_id, contact_id)
select t.list_id, c.contact_id from unnest($2::bigint[]) as t(list_id) cross join contacts c
where c.account_id = $1
  and case when $3 then not (c.contact_id = any($5::bigint[])) else c.contact_id = any($4::bigint[]) end
order by t.list_id, c.contact_id
on conflict (list_id, contact_id) do nothing
returning id
"""
REMOVE_MEMBERS: Final = """
delete from contact_list_members m using contact_lists l
where l.list_id = m.list_id and l.account_id = $1 and m.list_id = any($2::bigint[])
  and case when $3 then not (m.contact_id = any($5::bigint[])) else m.contact_id = any($4::bigint[]) end
"""
DELETE_MEMBERSHIP: Final = """
delete from contact_list_members m using contact_lists l
where m.id = $2 and l.list_id = m.list_id and l.account_id = $1
returning m.id
"""
ADD_IMPORTED: Final = ("insert into contact_list_members (list_id, contact_id) select $1, unnest($2::bigint[])"
                       " on conflict (list_id, contact_id) do nothing")


def _order(column: str, descending: bool, tiebreak: str) -> str:
    direction = "desc" if descending else "asc"
    return f"{column} {direction} nulls last, {tiebreak} {direction}"


async def search(db: Db, account_id: str, filters: Filters, *, sort_column: str, descending: bool,
                 priority_list_id: int | None, limit: int, offset: int,
                 in_list: int | None = None) -> list[asyncpg.Record]:
    """A page of the account's contacts matching ``filters`` (members of ``in_list`` only, when given)."""
    assert sort_column in SORTABLE.values()
    order = _order(sort_column, descending, "c.contact_id")
    args = (account_id, *filters.args(), priority_list_id, limit, offset)
    if in_list is None:
        return list(await db.fetch(SEARCH.format(order=order), *args))
    return list(await db.fetch(SEARCH_IN_LIST.format(order=order), *args, in_list))


async def get(db: Db, account_id: str, contact_id: int) -> asyncpg.Record | None:
    """One contact of the account."""
    return await db.fetchrow(GET, account_id, contact_id)


async def insert(db: Db, account_id: str, values: dict[str, Any]) -> asyncpg.Record:
    """Create a contact from UPDATABLE-keyed ``values``; UniqueViolationError when its phone (or, without a
    phone, its email) is already a contact of the account."""
    row = await db.fetchrow(
        INSERT, account_id, values.get("phoneNumber"), values.get("email"), values.get("firstName"),
        values.get("lastName"), values.get("gender"), values.get("customFields") or {}, values.get("isValid", False),
        values.get("communicationSupported", []), values.get("isTest", False))
    assert row is not None
    return row


async def update(db: Db, account_id: str, contact_id: int, values: dict[str, Any]) -> asyncpg.Record | None:
    """Change only the given fields; None when the contact is not the account's."""
    sets = []
    args: list[Any] = [account_id, contact_id]
    for field, value in values.items():
        args.append(value)
        column = UPDATABLE[field]
        sets.append(MERGE_CUSTOM.format(n=len(args)) if column == "custom_fields" else f"{column} = ${len(args)}")
    if not sets:
        return await get(db, account_id, contact_id)
    return await db.fetchrow(UPDATE.format(sets=", ".join(sets)), *args)


async def delete(db: Db, account_id: str, *, ids: list[int] | None, keep: list[int] | None) -> int:
    """Delete ``ids``, or every contact except ``keep``; the number deleted."""
    status = await (db.execute(DELETE_IDS, account_id, ids) if ids is not None
                    else db.execute(DELETE_ALL_EXCEPT, account_id, keep or []))
    return int(status.split()[-1])


async def upsert(conn: Conn, account_id: str, rows: Sequence[ImportRow]) -> tuple[list[int], int]:
    """Create or update one batch (no match key twice); the contacts' ids and how many were created."""
    by_phone = [r for r in rows if r.phone is not None]
    by_email = [r for r in rows if r.phone is None]
    found: list[asyncpg.Record] = []
    if by_phone:
        found += await conn.fetch(
            UPSERT_BY_PHONE, account_id, [r.phone.e164 for r in by_phone if r.phone],
            [r.email for r in by_phone], [r.first_name for r in by_phone], [r.last_name for r in by_phone],
            [r.gender for r in by_phone], [bool(r.phone and r.phone.is_valid) for r in by_phone],
            [",".join(r.phone.channels) if r.phone else "" for r in by_phone])
    if by_email:
        found += await conn.fetch(
            UPSERT_BY_EMAIL, account_id, [r.email for r in by_email], [r.first_name for r in by_email],
            [r.last_name for r in by_email], [r.gender for r in by_email])
    return [r["contact_id"] for r in found], sum(1 for r in found if r["inserted"])


async def add_imported(conn: Conn, list_id: int, contact_ids: list[int]) -> None:
    """Put imported contacts in a list (the list was checked to be the account's)."""
    await conn.execute(ADD_IMPORTED, list_id, contact_ids)


async def create_list(db: Db, account_id: str, name: str, description: str | None, is_test: bool) -> asyncpg.Record:
    """Create a contact list."""
    row = await db.fetchrow(CREATE_LIST, account_id, name, description, is_test)
    assert row is not None
    return row


async def lists(db: Db, account_id: str, *, search: str | None, is_test: bool | None, sort_column: str,
                descending: bool, limit: int, offset: int) -> list[asyncpg.Record]:
    """A page of the account's lists with their member counts."""
    assert sort_column in LIST_SORTABLE.values()
    pattern = None
    if search is not None:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return list(await db.fetch(LISTS.format(order=_order(sort_column, descending, "l.list_id")), account_id,
                               pattern, is_test, limit, offset))


async def list_exists(db: Db, account_id: str, list_id: int) -> bool:
    """Whether the list is the account's."""
    return bool(await db.fetchval(LIST_EXISTS, account_id, list_id))


async def unknown_lists(db: Db, account_id: str, list_ids: list[int]) -> list[int]:
    """Those of ``list_ids`` that are not lists of the account."""
    known = {r["list_id"] for r in await db.fetch(KNOWN_LISTS, account_id, list_ids)}
    return sorted(set(list_ids) - known)


async def delete_lists(db: Db, account_id: str, list_ids: list[int]) -> int:
    """Delete lists (their memberships go with them, the contacts stay); the number deleted."""
    return int((await db.execute(DELETE_LISTS, account_id, list_ids)).split()[-1])


async def add_members(db: Db, account_id: str, list_ids: list[int], *, all_contacts: bool,
                      contact_ids: list[int], exclude_ids: list[int]) -> list[int]:
    """Create the missing memberships; the ids of the ones created."""
    return [r["id"] for r in await db.fetch(ADD_MEMBERS, account_id, list_ids, all_contacts, contact_ids,
                                            exclude_ids)]


async def remove_members(db: Db, account_id: str, list_ids: list[int], *, all_contacts: bool,
                         contact_ids: list[int], exclude_ids: list[int]) -> int:
    """Delete memberships; the number deleted."""
    status = await db.execute(REMOVE_MEMBERS, account_id, list_ids, all_contacts, contact_ids, exclude_ids)
    return int(status.split()[-1])


async def delete_membership(db: Db, account_id: str, association_id: int) -> bool:
    """Delete one membership of one of the account's lists."""
    return await db.fetchval(DELETE_MEMBERSHIP, account_id, association_id) is not None
