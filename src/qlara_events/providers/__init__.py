"""Upstream provider dialects: verify each callback, then normalise it to canonical events.

One module per provider, each a class implementing :class:`~qlara_events.providers.base.Provider`.
The modules are pure (no I/O); the ingress serves them at ``/ingest/v1/providers/{name}``. A provider is
enabled by configuring its secret: :func:`build_providers` leaves out every provider without one.
"""

from __future__ import annotations

from qlara_events.providers.base import Callback, Provider, Reply
from qlara_events.providers.infobip import InfobipProvider
from qlara_events.providers.jasmin import JasminProvider
from qlara_events.providers.rbm import RbmProvider
from qlara_events.providers.twilio import TwilioProvider
from qlara_events.providers.vonage import VonageProvider
from qlara_events.providers.whatsapp import WhatsAppProvider

__all__ = [
    "Callback",
    "InfobipProvider",
    "JasminProvider",
    "Provider",
    "RbmProvider",
    "Reply",
    "TwilioProvider",
    "VonageProvider",
    "WhatsAppProvider",
    "build_providers",
]


def build_providers(
    *,
    twilio_auth_token: str | None = None,
    vonage_signature_secret: str | None = None,
    vonage_signature_method: str = "md5hash",
    infobip_token: str | None = None,
    whatsapp_app_secret: str | None = None,
    whatsapp_verify_token: str | None = None,
    rbm_client_token: str | None = None,
    jasmin_token: str | None = None,
) -> dict[str, Provider]:
    """The enabled providers by name: those whose secret (WhatsApp: both secrets) is set and non-empty.

    Vonage signing is optional upstream, but an endpoint that accepts unsigned receipts would let anyone
    forge them, so here a Vonage secret is what enables Vonage at all.
    """
    providers: list[Provider] = []
    if twilio_auth_token:
        providers.append(TwilioProvider(auth_token=twilio_auth_token))
    if vonage_signature_secret:
        providers.append(
            VonageProvider(signature_secret=vonage_signature_secret, signature_method=vonage_signature_method)
        )
    if infobip_token:
        providers.append(InfobipProvider(token=infobip_token))
    if whatsapp_app_secret and whatsapp_verify_token:
        providers.append(WhatsAppProvider(app_secret=whatsapp_app_secret, verify_token=whatsapp_verify_token))
    if rbm_client_token:
        providers.append(RbmProvider(client_token=rbm_client_token))
    if jasmin_token:
        providers.append(JasminProvider(token=jasmin_token))
    return {p.name: p for p in providers}
