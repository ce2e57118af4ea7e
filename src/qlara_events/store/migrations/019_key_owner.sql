-- Issue #12 item 3: an API key may have an owner, a user of its account (Qlara §10: `GET /authentication?userId=`
-- lists a user's keys; each entry names its `username`). Nullable, no default: adding it rewrites nothing.
-- Deleting the user leaves the key working, without an owner. That the owner belongs to the key's account is
-- checked by the insert itself (store/accounts.py), since users are keyed by user_id alone.
alter table api_keys add column owner_user_id bigint references users (user_id) on delete set null;
create index api_keys_owner on api_keys (owner_user_id) where owner_user_id is not null;
