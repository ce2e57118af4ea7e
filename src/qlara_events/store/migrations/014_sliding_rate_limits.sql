-- Per-key rate limits as sliding windows (issue #11): fixed windows let a key send its burst at the end of one
-- window and again at the start of the next. One row per key holds the current and the previous one-second and
-- one-minute windows; a request is counted only when it is allowed, and the estimate of a window is
--   previous count x (share of the previous window still inside the last W seconds) + current count.
-- rate_hit() decides and counts in one call, under the key's row lock, so every api process sees one count.
-- UNLOGGED like the table it replaces: losing it in a crash forgives a minute of traffic.

drop table if exists rate_counters;

create unlogged table rate_windows (
    key_id   text primary key,
    s_start  bigint not null,            -- Unix second of the current one-second window
    s_count  int not null,
    s_prev   int not null,               -- count of the one-second window before it
    m_start  bigint not null,            -- Unix seconds of the current minute window's start
    m_count  int not null,
    m_prev   int not null
);
create index rate_windows_idle on rate_windows (m_start);

-- (allowed, the estimates after this request, the windows' starts and counts) for one request at now_s.
create function rate_hit(p_key text, now_s double precision, per_minute int, burst int,
                         out allowed boolean, out s_estimate double precision, out m_estimate double precision,
                         out s_start bigint, out s_prev int, out s_count int,
                         out m_start bigint, out m_prev int, out m_count int)
language plpgsql as $$
declare
    r rate_windows%rowtype;
    sec bigint := floor(now_s);
    mnt bigint := floor(now_s / 60) * 60;
begin
    insert into rate_windows values (p_key, sec, 0, 0, mnt, 0, 0) on conflict (key_id) do nothing;
    select * into r from rate_windows w where w.key_id = p_key for update;
    -- A process whose clock lags another's counts in the newest window rather than resurrecting an old one.
    sec := greatest(sec, r.s_start);
    mnt := greatest(mnt, r.m_start);
    s_start := sec;
    s_prev := case when r.s_start = sec then r.s_prev when r.s_start = sec - 1 then r.s_count else 0 end;
    s_count := case when r.s_start = sec then r.s_count else 0 end;
    m_start := mnt;
    m_prev := case when r.m_start = mnt then r.m_prev when r.m_start = mnt - 60 then r.m_count else 0 end;
    m_count := case when r.m_start = mnt then r.m_count else 0 end;
    s_estimate := s_prev * greatest(0, 1 - (now_s - sec)) + s_count;
    m_estimate := m_prev * greatest(0, 1 - (now_s - mnt) / 60) + m_count;
    allowed := s_estimate + 1 <= burst and m_estimate + 1 <= per_minute;
    if allowed then
        s_count := s_count + 1;
        m_count := m_count + 1;
        s_estimate := s_estimate + 1;
        m_estimate := m_estimate + 1;
    end if;
    update rate_windows w set s_start = sec, s_count = rate_hit.s_count, s_prev = rate_hit.s_prev,
           m_start = mnt, m_count = rate_hit.m_count, m_prev = rate_hit.m_prev
    where w.key_id = p_key;
end $$;
