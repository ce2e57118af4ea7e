-- Accounts, API keys, the message status projection, its history and the status-change outbox.

create table accounts (
    account_id  text primary key,
    name        text not null,
    created_at  timestamptz not null default now()
);

-- Keys are random 32-byte secrets, so a SHA-256 digest is enough to store them safely (no slow KDF
-- needed: there is no low-entropy password to brute-force). The raw key is shown once and never stored.
create table api_keys (
    key_id      text primary key,
    account_id  text not null references accounts on delete cascade,
    key_hash    bytea not null unique,
    key_prefix  text not null,
    name        text,
    operations  text[],
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);
create index api_keys_account on api_keys (account_id);

-- One row per platform message: the monotonic status projection.
create table messages (
    message_id            text primary key,
    account_id            text not null,
    channel               text not null,
    customer_message_id   text not null,
    provider              text not null,
    provider_message_id   text not null,
    destination           text not null,
    sender                text,
    campaign_id           text,
    parts                 smallint not null default 1,
    status                text not null,
    status_rank           smallint not null,
    description           text,
    error_code            text,
    error_message         text,
    failed_after_delivery boolean not null default false,
    submitted_at          timestamptz not null,
    sent_at               timestamptz,
    delivered_at          timestamptz,
    read_at               timestamptz,
    failed_at             timestamptz,
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now()
);
-- customerMessageId is the partner's reference: unique in practice, but a reused one must not poison the
-- projector, so the index is not unique and lookups take the newest.
create index messages_customer on messages (account_id, channel, customer_message_id, submitted_at desc);
create index messages_account_time on messages (account_id, channel, submitted_at desc);

-- Provider identities of a message (one per part when the provider numbers parts separately).
create table message_refs (
    provider             text not null,
    provider_message_id  text not null,
    message_id           text not null references messages on delete cascade,
    part                 smallint,
    primary key (provider, provider_message_id)
);
create index message_refs_message on message_refs (message_id);

-- Per-part status of multi-part messages (rule 7: delivered only when every part is).
create table message_parts (
    message_id   text not null references messages on delete cascade,
    part         smallint not null,
    status       text not null,
    status_rank  smallint not null,
    updated_at   timestamptz not null default now(),
    primary key (message_id, part)
);

-- Every accepted event, once (event identity is the primary key). `message_id` is null while a receipt
-- waits for its message.submitted; `effect` says what the projector did with it.
create table message_events (
    event_id             text primary key,
    type                 text not null,
    message_id           text,
    ref_message_id       text,
    provider             text,
    provider_message_id  text,
    account_id           text,
    status               text,
    raw_status           text,
    part                 smallint,
    effect               text not null,
    via                  text not null,
    occurred_at          timestamptz not null,
    received_at          timestamptz not null,
    stored_at            timestamptz not null default now(),
    payload              jsonb not null
);
create index message_events_timeline on message_events (message_id, occurred_at, stored_at) where message_id is not null;
create index message_events_orphan_ref on message_events (provider, provider_message_id) where message_id is null;
create index message_events_orphan_id on message_events (ref_message_id) where message_id is null;

-- Inbound messages from end users; account_id is null until the destination address is routed.
create table sender_addresses (
    channel     text not null,
    address     text not null,
    account_id  text not null references accounts on delete cascade,
    primary key (channel, address)
);

create table inbound_messages (
    event_id             text primary key,
    account_id           text,
    channel              text not null,
    source               text not null,
    destination          text not null,
    text                 text not null,
    message_type         text not null,
    provider             text,
    provider_message_id  text,
    media                jsonb not null default '[]',
    occurred_at          timestamptz not null,
    stored_at            timestamptz not null default now()
);
create index inbound_account_time on inbound_messages (account_id, channel, occurred_at desc);

-- Transactional outbox: transitions are written in the batch's transaction and relayed to
-- qlara.status-changes after commit, so a crash between commit and produce loses nothing.
create table status_outbox (
    id          bigserial primary key,
    change_id   text not null unique,
    topic       text not null,
    payload     jsonb not null,
    created_at  timestamptz not null default now()
);

-- Kafka records the projector could not read at all (never expected: the ingress validates). Kept
-- instead of blocking the partition or dropping them.
create table unreadable_records (
    topic       text not null,
    partition   int not null,
    "offset"    bigint not null,
    key         bytea,
    value       bytea,
    error       text not null,
    stored_at   timestamptz not null default now(),
    primary key (topic, partition, "offset")
);
