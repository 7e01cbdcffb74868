"""The OpenAPI 3.1 document: valid (openapi-spec-validator), served, and describing exactly
the routes the app has (schemathesis checks the answers: conformance/test_rest_schemathesis.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openapi_spec_validator import validate

from gateway.app import build_https_app
from gateway.runtime import Services
from protocols.rest.openapi import document

ClientFactory = Callable[..., Any]


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document())


async def test_served_and_matching_the_routes(services: Services,
                                              aiohttp_client: ClientFactory) -> None:
    app = build_https_app(services)
    client = await aiohttp_client(app)
    response = await client.get("/api/v1/openapi.json")  # no token needed
    assert response.status == 200
    assert await response.json() == document()
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1/")
              and r.method != "HEAD"}
    described = {(path, method) for path, item in document()["paths"].items()
                 for method in item}
    assert routes == described
