"""Tokens at rest: AES-GCM sealed, bound to their row."""

from __future__ import annotations

import base64
import os

import pytest

from qlara_events.secrets_box import TokenBoxError, open_, parse_key, seal


class TestTokenBox:
    """Round trip, wrong key, wrong row, malformed key."""

    def test_round_trip_and_no_plaintext(self) -> None:
        """A sealed token opens with its key and context, and its bytes do not contain the token."""
        key = os.urandom(32)
        sealed = seal(key, "EAAG-secret-token", "ctx")
        assert b"EAAG-secret-token" not in sealed
        assert open_(key, sealed, "ctx") == "EAAG-secret-token"

    @pytest.mark.parametrize("mutation", ["key", "context", "byte"])
    def test_tampering(self, mutation: str) -> None:
        """Another key, another row or a flipped byte fails to open."""
        key = os.urandom(32)
        sealed = seal(key, "t", "ctx")
        if mutation == "key":
            key = os.urandom(32)
        elif mutation == "byte":
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        with pytest.raises(TokenBoxError):
            open_(key, sealed, "other" if mutation == "context" else "ctx")

    @pytest.mark.parametrize("raw", ["not base64!", base64.b64encode(b"short").decode()])
    def test_bad_keys(self, raw: str) -> None:
        """Keys must be base64 of exactly 32 bytes."""
        with pytest.raises(TokenBoxError):
            parse_key(raw)
