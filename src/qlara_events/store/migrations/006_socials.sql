-- Social profile connections, registered by operators after the dashboard's OAuth flow. The access
-- token is stored encrypted (AES-GCM, key from QLARA_SOCIAL_TOKEN_KEY), never in clear.

create table social_connections (
    connection_id      bigserial primary key,
    account_id         text not null references accounts on delete cascade,
    platform           text not null,
    profile_id         text not null,
    username           text,
    profile_name       text,
    picture_url        text,
    phone_number       text,
    pages              jsonb not null default '[]',
    token_ciphertext   bytea not null,
    token_expires_at   timestamptz,
    revoked_at         timestamptz,
    connected_at       timestamptz not null default now(),
    unique (account_id, platform, profile_id)
);
create index social_connections_account on social_connections (account_id, platform);
