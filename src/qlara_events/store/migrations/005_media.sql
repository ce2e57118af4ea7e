-- Media library: metadata in Postgres, bytes in the blob store (QLARA_STORAGE_DIR by default).

create table media (
    media_id     bigserial primary key,
    account_id   text not null references accounts on delete cascade,
    name         text not null,
    description  text,
    folder_id    bigint,
    mime_type    text not null,
    size         bigint not null,
    width        int,
    height       int,
    sha256       text not null,
    storage_key  text not null unique,
    created_at   timestamptz not null default now()
);
create index media_account on media (account_id, media_id);
