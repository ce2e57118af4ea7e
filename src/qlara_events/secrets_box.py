"""Encryption at rest for third-party tokens: AES-256-GCM with a key from configuration.

The ciphertext is ``version byte || 12-byte nonce || AES-GCM(token)``, bound to its row by associated data
(account, platform, profile), so a token copied onto another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"


class TokenBoxError(ValueError):
    """The key is malformed, or a ciphertext does not decrypt under it."""


def parse_key(b64: str) -> bytes:
    """A 32-byte key from its base64 form (``QLARA_SOCIAL_TOKEN_KEY``)."""
    try:
        key = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise TokenBoxError("QLARA_SOCIAL_TOKEN_KEY must be base64") from None
    if len(key) != 32:
        raise TokenBoxError("QLARA_SOCIAL_TOKEN_KEY must encode 32 bytes (AES-256)")
    return key


def seal(key: bytes, token: str, context: str) -> bytes:
    """Encrypt ``token`` for the row described by ``context``."""
    nonce = os.urandom(12)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, token.encode(), context.encode())


def open_(key: bytes, sealed: bytes, context: str) -> str:
    """Decrypt a sealed token; raises TokenBoxError when the key or the context does not match."""
    if not sealed.startswith(VERSION) or len(sealed) < 1 + 12 + 16:
        raise TokenBoxError("not a sealed token")
    try:
        return AESGCM(key).decrypt(sealed[1:13], sealed[13:], context.encode()).decode()
    except InvalidTag:
        raise TokenBoxError("token does not decrypt with this key and context") from None
