-- Campaigns, the account credit their confirmation reserves, and the counters the projector maintains on
-- every transition (statistics never scan history).

alter table accounts add column credit numeric(14, 4) not null default 0;

create table campaigns (
    campaign_id               bigserial primary key,
    account_id                text not null references accounts on delete cascade,
    name                      text not null,
    description               text,
    sending_mode              text not null,
    sms_sender                text,
    sms_body                  text,
    rcs_agent_id              text,
    rcs_template_id           text,
    whatsapp_phone_number_id  text,
    whatsapp_template_id      text,
    destination_type          smallint not null,       -- 1 lists, 2 raw numbers
    contact_list_ids          bigint[] not null default '{}',
    destinations              text[] not null default '{}',
    scheduled_at              timestamptz,
    ready_to_send             boolean not null default false,
    status                    smallint not null default 0,   -- 0 draft, 1 ready/scheduled, 2 sending, 3 done, 4 failed
    total_destinations        int,
    unit_price                numeric(14, 4),
    price                     numeric(14, 4),
    goal_fingerprint          text,                    -- what calculateGoal priced; a later edit invalidates it
    goal_calculated_at        timestamptz,
    confirmed_at              timestamptz,
    started_at                timestamptz,
    expanded                  int not null default 0,  -- recipients turned into send requests so far
    expansion_cursor          text,                    -- resume point (last contact id / destination index)
    expansion_done            boolean not null default false,
    expansion_attempts        int not null default 0,
    lease_until               timestamptz,
    deadline_at               timestamptz,
    completed_at              timestamptz,
    failed_reason             text,
    created_at                timestamptz not null default now(),
    updated_at                timestamptz not null default now()
);
create index campaigns_account on campaigns (account_id, campaign_id);
create index campaigns_runnable on campaigns (status, scheduled_at) where status in (1, 2);

-- Current status distribution of a campaign's messages per submission hour. The projector adds +1 for a
-- new message (SENT) and moves one unit from the old status to the new one on every transition.
create table campaign_counters (
    campaign_id  text not null,
    hour         timestamptz not null,
    status       text not null,
    count        bigint not null,
    primary key (campaign_id, hour, status)
);
