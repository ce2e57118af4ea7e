"""The OpenAPI document matches the routes served and the responses they give."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from qlara_events.api.spec import build
from qlara_events.server import ROLES, build_app

from support.live import post_events, status, submitted, wait_until
from support.settings import make_settings

P = "/partner-gateway/v1"


def validate(spec: dict[str, Any], schema_name: str, value: object) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(value)


def _refs(node: object) -> Iterator[str]:
    """Every ``$ref`` value anywhere in ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


class TestSpec:
    """Every route is documented and every documented path is served."""

    def test_routes_equal_paths(self, infra: tuple[str, str]) -> None:
        """The set of (method, path) in the app equals the set in the document."""
        app: web.Application = build_app(make_settings(*infra), ROLES)
        served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
                  if r.method != "HEAD" and r.resource is not None}
        documented = {(m, path) for path, ops in build()["paths"].items() for m in ops}
        assert served == documented

    def test_document_is_valid_openapi_31(self) -> None:
        """The document declares 3.1, every schema is valid JSON Schema and every $ref resolves."""
        spec = build()
        assert spec["openapi"].startswith("3.1")
        for name in spec["components"]["schemas"]:
            jsonschema.Draft202012Validator.check_schema(spec["components"]["schemas"][name])
        refs = list(_refs(spec))
        assert len(refs) > 20, "too few $refs found: the walk is broken"
        for ref in refs:
            assert ref.startswith("#/"), ref
            node: Any = spec
            for token in ref[2:].split("/"):
                token = token.replace("~1", "/").replace("~0", "~")
                assert isinstance(node, dict) and token in node, f"{ref} does not resolve"
                node = node[token]

    async def test_served_document(self, http, server) -> None:
        """The document is served without a key and equals build()."""
        async with http.get(f"{server.url}{P}/openapi.json") as resp:
            assert resp.status == 200
            assert await resp.json() == build()


class TestResponsesConform:
    """Real responses validate against their documented schemas."""

    async def test_status_timeline_and_errors(self, http, server, account) -> None:
        """Status, batch status, timeline and an error body all match the document."""
        spec = build()
        sub = submitted(account.id, channel="RCS", provider="rbm")
        await post_events(http, server, [sub, status("ERROR", message_id=sub["messageId"],
                                                     error={"code": "404", "message": "no RCS"})])

        async def failed() -> dict[str, Any] | None:
            async with http.get(f"{server.url}{P}/rcs/messages/{sub['messageId']}/status",
                                headers=account.headers) as r:
                body = await r.json()
            return body if r.status == 200 and body["deliveryStatus"] == "ERROR" else None

        validate(spec, "DeliveryStatusResponse", await wait_until(failed, what="ERROR projected"))
        async with http.get(f"{server.url}{P}/messages/status", headers=account.headers,
                            params={"ids": sub["customerMessageId"], "channel": "RCS"}) as r:
            items = await r.json()
            assert len(items) == 1
            validate(spec, "DeliveryStatusResponse", items[0])
        async with http.get(f"{server.url}{P}/messages/{sub['messageId']}/events", headers=account.headers) as r:
            validate(spec, "MessageTimeline", await r.json())
        async with http.get(f"{server.url}{P}/messages/status", headers=account.headers,
                            params={"channel": "RCS"}) as r:
            assert r.status == 400
            validate(spec, "Error", await r.json())


class TestStatusApiErrors:
    """The documented errors of the status endpoints."""

    @pytest.mark.parametrize(("params", "code"), [
        ({}, 400), ({"channel": "FAX"}, 400), ({"channel": "sms"}, 404),
    ])
    async def test_single_status_errors(self, http, server, account, params, code) -> None:
        """Missing/invalid channel is 400; an unknown id is 404."""
        async with http.get(f"{server.url}{P}/messages/status/nope", params=params, headers=account.headers) as r:
            assert r.status == code
            assert (await r.json())["status"] == code

    async def test_batch_over_500_ids(self, http, server, account) -> None:
        """More than 500 ids is a 400."""
        ids = ",".join(f"id{i}" for i in range(501))
        async with http.get(f"{server.url}{P}/messages/status", params={"ids": ids, "channel": "SMS"},
                            headers=account.headers) as r:
            assert r.status == 400

    @pytest.mark.parametrize("headers", [{}, {"X-API-Key": "qk_nope"}, {"Authorization": "Basic !!"}])
    async def test_bad_credentials(self, http, server, headers) -> None:
        """No key, an unknown key or malformed Basic credentials are 401."""
        async with http.get(f"{server.url}{P}/messages/status/x", params={"channel": "SMS"}, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "Unauthorized"

    async def test_basic_auth_with_key_as_password(self, http, server, account) -> None:
        """HTTP Basic with the API key as password authenticates like X-API-Key."""
        import base64

        basic = "Basic " + base64.b64encode(f"anyone:{account.key}".encode()).decode()
        async with http.get(f"{server.url}{P}/messages/status/x", params={"channel": "SMS"},
                            headers={"Authorization": basic}) as r:
            assert r.status == 404
