-- Inbox: account users (assignees), conversations per (account, channel, contact) and their messages.

create table users (
    user_id     bigserial primary key,
    account_id  text not null references accounts on delete cascade,
    name        text not null,
    email       text,
    avatar_url  text,
    created_at  timestamptz not null default now()
);
create index users_account on users (account_id);

create table conversations (
    chat_id              bigserial primary key,
    account_id           text not null references accounts on delete cascade,
    channel              text not null,
    contact              text not null,          -- the end user's address
    our_address          text,                   -- our number / agent id the contact writes to
    unread               int not null default 0,
    last_message_preview text,
    last_message_at      timestamptz,
    last_inbound_at      timestamptz,            -- starts WhatsApp's 24-hour customer-service window
    archived             boolean not null default false,
    assignee_user_id     bigint references users on delete set null,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    unique (account_id, channel, contact)
);
create index conversations_account_last on conversations (account_id, last_message_at desc);

create table conversation_messages (
    id            bigserial primary key,         -- numeric, for idFrom / idTo
    chat_id       bigint not null references conversations on delete cascade,
    direction     text not null,                  -- INBOUND | OUTBOUND
    event_id      text unique,                    -- inbound event id (dedup) ...
    message_id    text unique,                    -- ... or outbound platform message id
    text          text not null,
    message_type  text not null,
    media         jsonb not null default '[]',
    occurred_at   timestamptz not null,
    created_at    timestamptz not null default now()
);
create index conversation_messages_chat on conversation_messages (chat_id, id);
