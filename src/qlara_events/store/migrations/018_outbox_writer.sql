-- Issue #10 item 7: a restarted projector relays what its killed predecessor committed but had not produced
-- at once, instead of after the outbox's 10 s leftover age (projector/outbox.py). Each row names the process
-- that wrote it: `<instance id>:<start token>` for a projector with QLARA_KAFKA_INSTANCE_ID (static
-- membership: one live process per instance id), null otherwise. Nullable and without a default: adding it
-- rewrites nothing.
alter table status_outbox add column writer text;
