-- Contact imports as durable jobs (POST /contacts/upload with Prefer: respond-async): the uploaded file waits
-- in the blob store, a worker leases the job (a dead worker's lease expires and another resumes it), and the
-- import's one transaction also writes the result, so a job is applied exactly once.

create table contact_imports (
    import_id      bigserial primary key,
    account_id     text not null references accounts on delete cascade,
    file_name      text not null,
    params         jsonb not null,            -- format, header, preview, listId
    storage_key    text not null,             -- the uploaded file, deleted once the job has ended
    status         text not null default 'PENDING',   -- PENDING (RUNNING while leased) | COMPLETED | FAILED
    attempts       int not null default 0,
    lease_until    timestamptz,
    result         jsonb,                     -- COMPLETED: the report the synchronous upload returns
    error          jsonb,                     -- FAILED: the error body the synchronous upload returns
    created_at     timestamptz not null default now(),
    started_at     timestamptz,
    completed_at   timestamptz
);
create index contact_imports_account on contact_imports (account_id, status);
create index contact_imports_pending on contact_imports (created_at) where status = 'PENDING';
create index contact_imports_done on contact_imports (completed_at) where status <> 'PENDING';
