-- API key metadata for the /authentication endpoints, per-account rate-limit plans and the shared
-- rate-limit counters (fixed windows in Postgres, so every api process sees the same count).

alter table accounts add column plan text not null default 'production';
alter table api_keys add column description text;

create unlogged table rate_counters (
    key_id        text not null,
    kind          char(1) not null,    -- 's' per second (burst), 'm' per minute (sustained)
    window_start  bigint not null,     -- Unix seconds of the window's start
    count         int not null,
    primary key (key_id, kind, window_start)
);
