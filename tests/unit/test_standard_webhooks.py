"""Our Standard Webhooks signer against the reference ``standardwebhooks`` package."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from qlara_events.errors import Unauthorized
from qlara_events.standard_webhooks import new_secret, secret_key, signature_header, verify


class TestStandardWebhooks:
    """Signatures we make verify with the reference library; signatures it makes verify with ours."""

    def test_reference_library_verifies_ours(self) -> None:
        """A partner using standardwebhooks unchanged accepts our signature, including during rotation."""
        old, new = new_secret(), new_secret()
        body = b'{"eventType":"DELIVERY"}'
        ts = int(time.time())
        header = signature_header([secret_key(new), secret_key(old)], "msg_1", ts, body)
        for secret in (old, new):
            Webhook(secret).verify(body, {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
                                          "webhook-signature": header})

    def test_we_verify_the_reference_library(self) -> None:
        """An upstream sender signing with standardwebhooks is accepted by the ingest verifier."""
        secret = new_secret()
        body = b'{"type":"message.status"}'
        ts = int(time.time())
        import datetime as dt

        sig = Webhook(secret).sign("msg_2", dt.datetime.fromtimestamp(ts, dt.UTC), body.decode())
        headers = {"webhook-id": "msg_2", "webhook-timestamp": str(ts), "webhook-signature": sig}
        assert verify(secret_key(secret), headers, body, time.time()) == "msg_2"

    @pytest.mark.parametrize("tamper", ["body", "timestamp", "id", "stale"])
    def test_tampering_is_refused(self, tamper: str) -> None:
        """Any change to the signed content, or a stale timestamp, is Unauthorized."""
        secret = new_secret()
        body, ts = b"{}", int(time.time())
        headers = {"webhook-id": "m", "webhook-timestamp": str(ts),
                   "webhook-signature": signature_header([secret_key(secret)], "m", ts, body)}
        now = time.time()
        if tamper == "body":
            body = b"{ }"
        elif tamper == "timestamp":
            headers["webhook-timestamp"] = str(ts + 1)
        elif tamper == "id":
            headers["webhook-id"] = "n"
        else:
            now += 301
        with pytest.raises(Unauthorized):
            verify(secret_key(secret), headers, body, now)
        if tamper != "stale":  # the reference library reads the clock itself
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(body, headers)
