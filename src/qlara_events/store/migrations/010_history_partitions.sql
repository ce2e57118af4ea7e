-- Message history partitioned by month of submission, so that a window query (GET /messages/history, the
-- history export) reads only the months it asks for, each month's indexes stay small enough to be cached,
-- and an old month can be detached and dropped as a whole instead of deleted row by row.
--
-- A partitioned table can only enforce uniqueness on keys that contain the partition key, so `messages`
-- is keyed by (message_id, submitted_at). `message_keys` is the global identity: one narrow row per
-- message, unique on message_id, saying which month the message lives in. A trigger writes it for every
-- row inserted into `messages`, whoever inserts it, and skips the row when the id already exists in any
-- month (what `on conflict (message_id) do nothing` did before). Lookups by id go through it, so they
-- read one partition, not every month; message_refs/message_parts hang off it with the cascading
-- foreign keys they had before.

create table message_keys (
    message_id    text primary key,
    submitted_at  timestamptz not null
);
insert into message_keys (message_id, submitted_at) select message_id, submitted_at from messages;

alter table message_refs drop constraint message_refs_message_id_fkey;
alter table message_parts drop constraint message_parts_message_id_fkey;

alter table messages rename to messages_unpartitioned;
alter index messages_pkey rename to messages_unpartitioned_pkey;
alter index messages_customer rename to messages_unpartitioned_customer;
alter index messages_account_time rename to messages_unpartitioned_account_time;

create table messages (like messages_unpartitioned including defaults) partition by range (submitted_at);
alter table messages add primary key (message_id, submitted_at);
create index messages_customer on messages (account_id, channel, customer_message_id, submitted_at desc);
-- GET /messages/history reads a window in (submitted_at, message_id) order: the index gives it that order,
-- so a page is read, not sorted out of the whole window.
create index messages_account_time on messages (account_id, channel, submitted_at, message_id);

create function qlara_message_key() returns trigger
language plpgsql as $$
begin
    insert into message_keys (message_id, submitted_at) values (new.message_id, new.submitted_at)
    on conflict (message_id) do nothing;
    if not found then
        return null;  -- this message exists already (in this month or another): keep the first
    end if;
    return new;
end
$$;

-- Rows whose month has no partition yet (a maintenance gap, or a timestamp far outside the window kept
-- ready) land here instead of failing the projector; qlara_ensure_message_partitions moves them out.
create table messages_default partition of messages default;

-- Create the monthly partitions from `back` months ago (only those months the default partition holds
-- rows of) up to `ahead` months from now (always), moving any default rows of a new month into it.
-- Idempotent and safe to run concurrently (one advisory lock). Returns how many partitions it created.
create function qlara_ensure_message_partitions(back int, ahead int) returns int
language plpgsql as $$
declare
    this_month timestamp := date_trunc('month', now() at time zone 'UTC');
    month timestamp;
    lo timestamptz;
    hi timestamptz;
    part text;
    created int := 0;
begin
    perform pg_advisory_xact_lock(7170926);
    for month in
        select generate_series(this_month - interval '1 month', this_month + make_interval(months => ahead),
                               interval '1 month')
        union
        select distinct date_trunc('month', submitted_at at time zone 'UTC') from messages_default
        where submitted_at >= (this_month - make_interval(months => back)) at time zone 'UTC'
          and submitted_at < (this_month + make_interval(months => ahead + 1)) at time zone 'UTC'
        order by 1
    loop
        part := 'messages_' || to_char(month, 'YYYY_MM');
        continue when to_regclass(format('%I.%I', current_schema(), part)) is not null;
        lo := month at time zone 'UTC';
        hi := (month + interval '1 month') at time zone 'UTC';
        execute format('create table %I (like messages including defaults)', part);
        execute format('with moved as (delete from messages_default where submitted_at >= %L and submitted_at < %L'
                       ' returning *) insert into %I select * from moved', lo, hi, part);
        execute format('alter table messages attach partition %I for values from (%L) to (%L)', part, lo, hi);
        created := created + 1;
    end loop;
    return created;
end
$$;

-- Existing rows (their keys are in already): make their months' partitions (two years back), copy them in.
select qlara_ensure_message_partitions(24, 3);
insert into messages select * from messages_unpartitioned;
select qlara_ensure_message_partitions(24, 3);
drop table messages_unpartitioned;

create trigger message_key before insert on messages for each row execute function qlara_message_key();

alter table message_refs add foreign key (message_id) references message_keys on delete cascade;
alter table message_parts add foreign key (message_id) references message_keys on delete cascade;
