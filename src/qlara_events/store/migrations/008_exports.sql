-- Export jobs: durable (a restarted worker resumes them through the lease; repeated failures end FAILED,
-- never PENDING forever), files in the blob store, downloadable through signed, expiring links.

create table exports (
    export_id      bigserial primary key,
    account_id     text not null references accounts on delete cascade,
    kind           text not null,            -- MESSAGE_HISTORY | DELIVERY_REPORTS | CONTACTS
    params         jsonb not null,
    status         text not null default 'PENDING',   -- PENDING | COMPLETED | FAILED | EXPIRED
    attempts       int not null default 0,
    lease_until    timestamptz,
    row_count      bigint,
    size           bigint,
    storage_key    text,
    error          text,
    created_at     timestamptz not null default now(),
    started_at     timestamptz,
    completed_at   timestamptz,
    expires_at     timestamptz
);
create index exports_account on exports (account_id, created_at desc);
create index exports_pending on exports (created_at) where status = 'PENDING';
