"""schemathesis against the served OpenAPI document: no 5xx, every response conforms to the document.

Every operation of ``/partner-gateway/v1/openapi.json`` gets a fixed, derandomized budget of schemathesis
cases (valid and invalid data), sent over real HTTP to the session's live server and checked with every
schemathesis check (server errors, documented status codes, content types, response schemas and headers,
negative data rejected, auth enforced...).

The live server runs on the session's event loop in this thread, and schemathesis calls it synchronously
(``requests``), so each operation's hypothesis run goes to a worker thread (``asyncio.to_thread``) while
the loop keeps serving.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema

from qlara_events.api.spec import build, paged_operations

from support.live import Account, LiveServer

P = "/partner-gateway/v1"

# schemathesis's own strategies call the global ``random`` (e.g. to pick which header to make invalid);
# hypothesis seeds that generator per example, so runs stay reproducible, and schemathesis's own runner
# ignores this HypothesisWarning the same way.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning")
#: Cases per operation and generation mode; about 30 s for the whole document on this 2-core machine.
MAX_EXAMPLES = 20

#: schemathesis settings (the same keys as schemathesis.toml). Registering or replacing a webhook resolves the
#: callbackUrl's host and refuses one that does not resolve or resolves to a forbidden address: a schema-valid
#: URL (``https://0.com``) is then a 400, as the document says for these two operations, and whether a random
#: host resolves depends on the machine's DNS, so 400 is an expected answer to valid data there.
CONFIG = """
seed = 20261126

[[operations]]
include-operation-id = ["createWebhook", "replaceWebhook"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# A contact import's file part is schema-valid whatever its bytes, but only a readable CSV/XLS(X)/vCard is
# accepted: the document's 400 ("unsupported or corrupt file") is the right answer to random bytes.
[[operations]]
include-operation-id = ["uploadContacts", "uploadContactsVcard"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# A media upload's file part is schema-valid whatever its bytes, but the type is judged from the bytes: only
# a real JPEG, PNG, GIF or MP4 is stored, and the document's 400 ("unsupported type") answers random bytes.
[[operations]]
include-operation-id = ["uploadMedia"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# A campaign's destinations must be numbers libphonenumber can place (an E.164-shaped string of random digits
# usually is not), and readyToSend true needs the sending mode's channel fields: the schema gives the E.164
# shape, the rest is the document's 400.
[[operations]]
include-operation-id = ["createCampaign"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"""

# page * limit past MAX_OFFSET rows is the document's 400 on every paged list (said on ``page``): a rule across
# two parameters that no schema can state, so schema-valid data may meet it.
CONFIG += f"""
[[operations]]
include-operation-id = {[op["operationId"] for op in paged_operations(build()["paths"])]!r}
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
""".replace("'", '"')


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) for every documented operation; invalid data only where there is an input."""
    out = []
    for path, ops in build()["paths"].items():
        for method, op in ops.items():
            out.append((method.upper(), path, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                out.append((method.upper(), path, GenerationMode.NEGATIVE))
    return sorted(out)


#: The document is built in code; the test fetches the served copy (test_openapi checks the two are equal).
CASES = _cases()


@pytest.fixture(scope="module")
async def served_schema(http: aiohttp.ClientSession, server: LiveServer) -> BaseSchema:
    """The OpenAPI document as the server serves it, loaded by schemathesis."""
    async with http.get(f"{server.url}{P}/openapi.json") as resp:
        assert resp.status == 200
        document: dict[str, Any] = await resp.json()
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_str(CONFIG))


def _fuzz(operation: APIOperation[Any, Any, Any, Any], base_url: str, headers: dict[str, str], mode: GenerationMode) -> int:
    """Run the operation's hypothesis test (in a worker thread); returns how many cases were sent."""
    sent = 0
    with requests.Session() as session:

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                             # No shrinking: schemathesis reports each failure with a curl line already,
                             # and shrinking a failing operation would multiply the file's run time.
                             phases=[Phase.explicit, Phase.generate],
                             suppress_health_check=list(HealthCheck), print_blob=False)
        def run(case: schemathesis.Case[Any]) -> None:
            nonlocal sent
            sent += 1
            case.call_and_validate(base_url=base_url, session=session, headers=headers, timeout=10)

        run()
    return sent


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
class TestServedDocument:
    """Each documented operation answers every generated case as the document says, never with a 5xx."""

    async def test_operation_conforms(self, served_schema: BaseSchema, server: LiveServer, account: Account,
                                      method: str, path: str, mode: GenerationMode) -> None:
        """A fixed budget of generated cases passes every schemathesis check."""
        operation = served_schema[path][method]
        sent = await asyncio.to_thread(_fuzz, operation, server.url, account.headers, mode)
        assert sent > 0
