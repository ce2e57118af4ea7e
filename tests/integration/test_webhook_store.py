"""The delivery queue's bookkeeping against real Postgres: disabling after continuous failure."""

from __future__ import annotations

import datetime as dt

import asyncpg

from qlara_events.standard_webhooks import new_secret
from qlara_events.store import webhooks as store

from support.live import Account, uid


async def _failing_delivery(db: asyncpg.Pool, account: Account) -> tuple[str, str]:
    hook = await store.create(db, account.id, "https://hooks.example.com/x", new_secret())
    assert hook is not None
    did = uid("msg_")
    await store.enqueue(db, [store.NewDelivery(
        delivery_id=did, webhook_id=hook["webhook_id"], account_id=account.id, change_id=uid(),
        message_id=uid(), event_type="DELIVERY", status_rank=4, body=b"{}", changed_at=dt.datetime.now(dt.UTC),
        # Not due for a day: a dispatcher other tests run against this database would otherwise claim it, fail
        # to reach hooks.example.com now, and (failing since t0, six days ago) disable the webhook mid-test.
        next_delay_s=86400.0)])
    return hook["webhook_id"], did


def _failure(webhook_id: str, delivery_id: str, attempt: int, at: dt.datetime) -> store.AttemptRecord:
    return store.AttemptRecord(delivery_id=delivery_id, webhook_id=webhook_id, message_id=None, status_rank=4,
                               attempt=attempt, attempted_at=at, status_code=500, latency_ms=3, error="HTTP 500",
                               outcome="failed", next_delay_s=60.0)


class TestContinuousFailure:
    """A webhook failing for longer than the disable window is disabled, with its reason."""

    async def test_disabled_after_window(self, db: asyncpg.Pool, account: Account) -> None:
        """Failures spanning more than disable_after disable it; a shorter span does not."""
        webhook_id, did = await _failing_delivery(db, account)
        t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=6)
        assert await store.record(db, _failure(webhook_id, did, 1, t0), disable_after_s=5 * 86400) is None
        assert await store.record(db, _failure(webhook_id, did, 2, t0 + dt.timedelta(days=4)),
                                  disable_after_s=5 * 86400) is None
        reason = await store.record(db, _failure(webhook_id, did, 3, t0 + dt.timedelta(days=5, seconds=1)),
                                    disable_after_s=5 * 86400)
        assert reason is not None and "failing continuously since" in reason
        row = await store.get(db, account.id)
        assert row is not None and row["status"] == "DISABLED" and row["disabled_reason"] == reason

    async def test_success_resets_the_window(self, db: asyncpg.Pool, account: Account) -> None:
        """A success between failures restarts the continuous-failure clock."""
        webhook_id, did = await _failing_delivery(db, account)
        t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=6)
        await store.record(db, _failure(webhook_id, did, 1, t0), disable_after_s=5 * 86400)
        ok = store.AttemptRecord(delivery_id=did, webhook_id=webhook_id, message_id=None, status_rank=4, attempt=2,
                                 attempted_at=t0 + dt.timedelta(days=1), status_code=200, latency_ms=3, error=None,
                                 outcome="succeeded", next_delay_s=None)
        await store.record(db, ok, disable_after_s=5 * 86400)
        assert await store.record(db, _failure(webhook_id, did, 3, t0 + dt.timedelta(days=5, seconds=1)),
                                  disable_after_s=5 * 86400) is None
        row = await store.get(db, account.id)
        assert row is not None and row["status"] == "ACTIVE"
