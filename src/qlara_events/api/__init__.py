"""The Qlara Platform API (``/partner-gateway/v1``), served from the projections in Postgres.

``auth.py`` resolves the caller's account from its key; one module per resource family holds the views;
``spec.py`` is the OpenAPI document served at ``/partner-gateway/v1/openapi.json``.
"""
