-- Partner webhooks: one delivery-status webhook per account, its deliveries and their attempts.

create table webhooks (
    webhook_id                  text primary key,
    account_id                  text not null unique references accounts on delete cascade,
    callback_url                text not null,
    status                      text not null default 'ACTIVE',   -- ACTIVE | DISABLED
    -- The signing secret is shown to the partner on every GET (Qlara's model), so it is stored as is.
    secret                      text not null,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    failing_since               timestamptz,
    disabled_at                 timestamptz,
    disabled_reason             text,
    created_at                  timestamptz not null default now(),
    updated_at                  timestamptz not null default now()
);

-- One row per (event, webhook). delivery_id is the webhook-id header: stable across retries.
-- state: scheduled (waiting for next_attempt_at) | in_flight (leased by a dispatcher until lease_until)
--        | succeeded | dead (retries exhausted or endpoint gone) | superseded (a higher status was
--        already acknowledged for the message)
create table webhook_deliveries (
    delivery_id       text primary key,
    webhook_id        text not null references webhooks on delete cascade,
    account_id        text not null,
    change_id         text not null,
    message_id        text,
    event_type        text not null,
    status_rank       smallint,
    body              bytea not null,
    state             text not null default 'scheduled',
    attempts          int not null default 0,
    -- attempts made before the last manual retry/recover: the retry schedule restarts from there.
    schedule_base     int not null default 0,
    next_attempt_at   timestamptz,
    lease_until       timestamptz,
    last_attempt_at   timestamptz,
    last_status_code  int,
    last_error        text,
    last_latency_ms   int,
    changed_at        timestamptz not null,
    created_at        timestamptz not null default now(),
    finished_at       timestamptz
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where state = 'scheduled';
create index webhook_deliveries_leased on webhook_deliveries (lease_until) where state = 'in_flight';
create index webhook_deliveries_log on webhook_deliveries (webhook_id, created_at, delivery_id);
create index webhook_deliveries_message on webhook_deliveries (webhook_id, message_id);

create table webhook_attempts (
    delivery_id   text not null references webhook_deliveries on delete cascade,
    attempt       int not null,
    attempted_at  timestamptz not null,
    status_code   int,
    latency_ms    int not null,
    error         text,
    outcome       text not null,
    primary key (delivery_id, attempt)
);

-- The highest status rank each partner acknowledged per message: a lower one is never sent after it.
create table webhook_acked (
    webhook_id   text not null references webhooks on delete cascade,
    message_id   text not null,
    status_rank  smallint not null,
    primary key (webhook_id, message_id)
);
