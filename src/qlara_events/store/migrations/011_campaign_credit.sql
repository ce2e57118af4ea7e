-- What a campaign's confirmation reserved from the account's credit, so that the reservation can be given
-- back (deleted, or edited back to draft, before it starts) and settled when it ends (charged for the
-- messages actually handed to the senders: expanded x unit_price; the rest returned).
alter table campaigns add column reserved_credit numeric(14, 4);
alter table campaigns add column charged_credit numeric(14, 4);
-- Campaigns confirmed before this migration reserved their price.
update campaigns set reserved_credit = price where confirmed_at is not null and status in (1, 2);
