-- Issue #17: api processes resolve API keys from memory and count rate limits in memory, reconciling with
-- Postgres in the background (store/keycache.py, store/ratesync.py).
--
-- 1. Every change that can make a cached key wrong notifies the channel `qlara_api_keys` at commit: a key
--    revoked, deleted (also by its account's deletion, which cascades), or its channels changed ('k:<key_id>');
--    an account's plan changed or the account deleted ('a:<account_id>'). Being a trigger, it covers every
--    path: the API, the CLI, a hand-written SQL statement. Creating a key needs no notification: unknown keys
--    are never cached.
create function qlara_api_key_changed() returns trigger
language plpgsql as $$
begin
    if tg_table_name = 'accounts' then
        perform pg_notify('qlara_api_keys', 'a:' || case when tg_op = 'DELETE' then old.account_id
                                                          else new.account_id end);
    else
        perform pg_notify('qlara_api_keys', 'k:' || old.key_id);
    end if;
    return null;
end
$$;

create trigger api_key_changed
after delete or update of revoked_at, operations, key_hash, account_id on api_keys
for each row execute function qlara_api_key_changed();

create trigger account_plan_changed
after delete or update of plan on accounts
for each row execute function qlara_api_key_changed();

-- 2. rate_sync(): one api process's counts since its last call, added to the shared sliding windows of
--    migration 014 (rate_windows), and the windows of the keys it asks about read back, in one round trip.
--    A delta is (key, Unix second, allowed requests in that second); the second also names its minute. Rows
--    are locked in key order, so two processes syncing the same keys cannot deadlock. A delta for a window
--    that another process has already moved past lands in the previous window, or is dropped once it no
--    longer weighs on either (exactly what rate_hit() would have done with it had it come in time).
create function rate_sync(p_keys text[], p_secs bigint[], p_counts int[], p_read text[])
returns setof rate_windows
language plpgsql as $$
declare
    d record;
    w rate_windows%rowtype;
    mnt bigint;
begin
    for d in select * from unnest(p_keys, p_secs, p_counts) as u(key_id, sec, n) order by 1, 2 loop
        mnt := (d.sec / 60) * 60;
        insert into rate_windows values (d.key_id, d.sec, 0, 0, mnt, 0, 0) on conflict (key_id) do nothing;
        select * into w from rate_windows r where r.key_id = d.key_id for update;
        if d.sec = w.s_start then
            w.s_count := w.s_count + d.n;
        elsif d.sec = w.s_start + 1 then
            w.s_prev := w.s_count; w.s_count := d.n; w.s_start := d.sec;
        elsif d.sec > w.s_start + 1 then
            w.s_prev := 0; w.s_count := d.n; w.s_start := d.sec;
        elsif d.sec = w.s_start - 1 then
            w.s_prev := w.s_prev + d.n;
        end if;
        if mnt = w.m_start then
            w.m_count := w.m_count + d.n;
        elsif mnt = w.m_start + 60 then
            w.m_prev := w.m_count; w.m_count := d.n; w.m_start := mnt;
        elsif mnt > w.m_start + 60 then
            w.m_prev := 0; w.m_count := d.n; w.m_start := mnt;
        elsif mnt = w.m_start - 60 then
            w.m_prev := w.m_prev + d.n;
        end if;
        update rate_windows r set s_start = w.s_start, s_count = w.s_count, s_prev = w.s_prev,
               m_start = w.m_start, m_count = w.m_count, m_prev = w.m_prev
        where r.key_id = d.key_id;
    end loop;
    return query select * from rate_windows r where r.key_id = any(p_read);
end $$;
