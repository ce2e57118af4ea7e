"""The OpenAPI document tells Qlara's operations from ours (issue #12 acceptance 2: ``x-qlara-extension``)."""

from __future__ import annotations

from typing import Any

from qlara_events.api import spec

PREFIX = "/partner-gateway/v1"

#: Added deliberately: a new operation must be classified here (contract or extension), not by accident.
EXTENSIONS = {
    "getMessageTimeline", "getOpenApi", "rotateWebhookSecret", "listDeliveries", "recoverDeliveries",
    "retryDelivery", "getContactImport",
}


def operations() -> list[tuple[str, dict[str, Any]]]:
    doc = spec.build()
    return [(path, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in {"get", "put", "post", "delete", "patch"}]


def test_exactly_the_extensions_are_marked() -> None:
    marked = {op["operationId"] for path, op in operations() if op.get("x-qlara-extension") is True}
    assert marked == EXTENSIONS


def test_every_contract_operation_is_served_and_unmarked() -> None:
    """All 59 operations of Qlara's endpoint list are in the document, none marked."""
    served = {op["operationId"]: op for path, op in operations() if path.startswith(PREFIX + "/")}
    assert len(spec.CONTRACT_OPERATIONS) == 59
    assert spec.CONTRACT_OPERATIONS <= set(served)
    assert not any(served[name].get("x-qlara-extension") for name in spec.CONTRACT_OPERATIONS)
    assert set(served) == spec.CONTRACT_OPERATIONS | EXTENSIONS


def test_the_services_own_endpoints_are_outside_the_prefix_and_unmarked() -> None:
    outside = [(path, op) for path, op in operations() if not path.startswith(PREFIX + "/")]
    assert outside and all("x-qlara-extension" not in op for _, op in outside)
    assert all(path.split("/")[1] in {"ingest", "files", "healthz", "readyz", "metrics"} for path, _ in outside)
