-- The dispatcher attempts a change's first delivery straight from the stream (docs/webhooks.md): it keeps
-- every webhook in memory and must see a webhook created, changed, rotated, disabled or deleted through
-- the API within about a second. Each such change notifies the channel `qlara_webhooks` with the account id
-- (delivered at commit); dispatchers reload that account's webhook. Updates of the failure clock alone
-- (`failing_since`, on every failed attempt) do not notify.
create function qlara_webhook_changed() returns trigger
language plpgsql as $$
begin
    perform pg_notify('qlara_webhooks', case when tg_op = 'DELETE' then old.account_id else new.account_id end);
    return null;
end
$$;

create trigger webhook_changed
after insert or delete or update of callback_url, status, secret, previous_secret, previous_secret_expires_at
on webhooks for each row execute function qlara_webhook_changed();
