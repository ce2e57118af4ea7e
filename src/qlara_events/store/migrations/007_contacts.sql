-- Contacts and contact lists (Qlara §5): campaign audiences, imported in bulk and matched by phone number.

-- Trigram index support for the case-insensitive substring search of GET /contacts (search=). pg_trgm is a
-- trusted extension since PostgreSQL 13, so a database owner may create it without superuser rights.
create extension if not exists pg_trgm;

create table contacts (
    contact_id               bigserial primary key,
    account_id               text not null references accounts on delete cascade,
    phone_number             text,                    -- E.164 as normalised by libphonenumber
    email                    text,
    first_name               text,
    last_name                text,
    full_name                text generated always as
                                 (nullif(btrim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')), ''))
                                 stored,
    gender                   text,                    -- MALE | FEMALE | OTHER
    custom_fields            jsonb not null default '{}',
    is_valid                 boolean not null default false,
    communication_supported  text[] not null default '{}',
    is_test                  boolean not null default false,
    last_contact_type        text,                    -- SMS | RCS | WHATSAPP, written by campaign sends
    last_campaign_type       text,
    -- What search= matches: names, email and phone in one lower-cased string (one trigram index serves all).
    search_text              text generated always as (lower(
                                 coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' '
                                 || coalesce(email, '') || ' ' || coalesce(phone_number, ''))) stored,
    created_at               timestamptz not null default now(),
    updated_at               timestamptz not null default now(),
    check (phone_number is not null or email is not null)
);
-- The import key: one contact per phone number in an account (nulls are distinct, so email-only contacts
-- are not constrained here) ...
create unique index contacts_phone on contacts (account_id, phone_number);
-- ... and contacts without a phone are matched by their email, case-insensitively.
create unique index contacts_email_only on contacts (account_id, lower(email)) where phone_number is null;
create index contacts_email on contacts (account_id, lower(email));
create index contacts_full_name on contacts (account_id, full_name, contact_id);
create index contacts_search on contacts using gin (search_text gin_trgm_ops);

create table contact_lists (
    list_id      bigserial primary key,
    account_id   text not null references accounts on delete cascade,
    name         text not null,
    description  text,
    is_test      boolean not null default false,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index contact_lists_account on contact_lists (account_id, list_id);

-- A membership ("association"): its id is what DELETE /contacts/list/contacts/{id} takes. Deleting a list or
-- a contact deletes its memberships, never the other side.
create table contact_list_members (
    id          bigserial primary key,
    list_id     bigint not null references contact_lists on delete cascade,
    contact_id  bigint not null references contacts on delete cascade,
    created_at  timestamptz not null default now(),
    unique (list_id, contact_id)
);
create index contact_list_members_contact on contact_list_members (contact_id, list_id);
