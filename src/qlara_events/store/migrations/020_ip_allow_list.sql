-- Issue #12 item 2: an IP allow-list per account (Qlara §1.2: requests from an address not on the list get
-- 403). No rows = no restriction. api processes hold each key's account networks in their key cache
-- (store/keycache.py); a change of the list notifies 'a:<account_id>' on `qlara_api_keys` at commit
-- (migration 017's function), so every process drops the account's cached keys and reads the new list.
create table account_networks (
    account_id  text not null references accounts on delete cascade,
    network     cidr not null,
    created_at  timestamptz not null default now(),
    primary key (account_id, network)
);

create function qlara_account_networks_changed() returns trigger
language plpgsql as $$
begin
    perform pg_notify('qlara_api_keys', 'a:' || case when tg_op = 'DELETE' then old.account_id
                                                      else new.account_id end);
    if tg_op = 'UPDATE' and old.account_id <> new.account_id then
        perform pg_notify('qlara_api_keys', 'a:' || old.account_id);
    end if;
    return null;
end
$$;

create trigger account_networks_changed
after insert or update or delete on account_networks
for each row execute function qlara_account_networks_changed();
