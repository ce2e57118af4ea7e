-- What each projector batch writes costs less (benchmarks/README.md, "Projector: profile and EXPLAIN (session 3)").
--
-- 1. message_refs no longer has a foreign key to message_keys. The projector inserts a message's refs right
--    after the insert into `messages` whose trigger made (or found) its key, in the same transaction, so the
--    check never failed; it cost a lookup and a FOR KEY SHARE lock on the key (a write to its page) per ref.
--    What the key was relied on for is the cascade: deleting a message's key (`history drop-month`, or by
--    hand) deletes its refs. A statement-level trigger on message_keys keeps exactly that.
-- 2. Room on every heap page for status updates (fillfactor 85 on the months of `messages`, existing and
--    new, and on message_parts): an update that finds room on its row's page and changes no indexed column
--    (status, timestamps and descriptions are in no index) is HOT, writing no index entry.

alter table message_refs drop constraint message_refs_message_id_fkey;

create function qlara_message_keys_deleted() returns trigger
language plpgsql as $$
begin
    delete from message_refs r using gone g where r.message_id = g.message_id;
    return null;
end
$$;

create trigger message_keys_deleted after delete on message_keys referencing old table as gone
for each statement execute function qlara_message_keys_deleted();

do $$
declare
    part regclass;
begin
    for part in select inhrelid::regclass from pg_inherits where inhparent = 'messages'::regclass loop
        execute format('alter table %s set (fillfactor = 85)', part);
    end loop;
end
$$;
alter table message_parts set (fillfactor = 85);

-- As in 010, but each new month is created with fillfactor 85 (`like` does not copy storage parameters).
create or replace function qlara_ensure_message_partitions(back int, ahead int) returns int
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
        execute format('create table %I (like messages including defaults) with (fillfactor = 85)', part);
        execute format('with moved as (delete from messages_default where submitted_at >= %L and submitted_at < %L'
                       ' returning *) insert into %I select * from moved', lo, hi, part);
        execute format('alter table messages attach partition %I for values from (%L) to (%L)', part, lo, hi);
        created := created + 1;
    end loop;
    return created;
end
$$;
