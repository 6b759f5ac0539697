"""The services' HTTP contract as published in /openapi.json.

Every error a service sends is one JSON body, `ErrorBody`:
`{error, message, field?, errors?, ...}` (`field` names the bad input,
`errors` lists every bad field of a 400/422; some errors add context such as
`store` or `payment`).  FastAPI's own `{detail: [...]}` is never sent, so it
is never documented either.

A route declares the statuses only it answers (`errors(404, 409)`);
`publish()` adds the ones that follow from the route's shape, so that every
status a route can answer is documented:

- 422 for any route with parameters or a body (a value that fails validation);
- 400 (malformed JSON) and 413 (body over the limit) for a route with a body;
- 404 for a route with path parameters (an id that does not exist, or a path
  that no longer names a route);
- 503 on every route of a service with a database or peers (a store or peer is
  unavailable), unless the route says otherwise (`NO_STORE`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErrorBody", "FieldError", "errors", "publish", "NO_STORE", "DESCRIPTIONS"]

REF = "#/components/schemas/{model}"
NO_STORE = {"x-msdb-no-store": True}   # openapi_extra of a route that touches no store

DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON (or not UTF-8); `field` is `body`",
    401: "Wrong credentials",
    402: "Payment declined",
    404: "Unknown id (`field` names it), or no such route",
    409: "Conflict with the current state (e.g. a duplicate, or a reused Idempotency-Key)",
    413: "Request body over the size limit; `field` is `body`",
    422: "Invalid input: `field` names the first bad field, `errors` lists every one",
    503: "A store or peer is unavailable; retry after `Retry-After` seconds",
}


class FieldError(BaseModel):
    field: str = Field(description="the bad input: `email`, `items[1].quantity`, `body`, ...")
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""
    model_config = ConfigDict(extra="allow")

    error: str = Field(description="machine-readable code: invalid_request, not_found, conflict, ...")
    message: str = Field(description="what is wrong, for a human")
    field: str = Field(None, description="the input at fault, when one is")
    errors: list[FieldError] = Field(None, description="every bad field (400 and 422)")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses, with the error body."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def _error_response(code: int) -> dict:
    return {"description": DESCRIPTIONS[code],
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}}


def _complete(op: dict, *, unavailable: bool) -> None:
    params = op.get("parameters", [])
    has_body = "requestBody" in op
    responses = op["responses"]
    auto = []
    if params or has_body:
        auto.append(422)
    if has_body:
        auto += [400, 413]
    if any(p.get("in") == "path" for p in params):
        auto.append(404)
    if unavailable and not op.pop(next(iter(NO_STORE)), False):
        auto.append(503)
    for code in auto:
        responses.setdefault(str(code), _error_response(code))
    # FastAPI's default 422 ({detail: [...]}) describes a body the services never send.
    r422 = responses.get("422", {})
    if "HTTPValidationError" in str(r422.get("content", "")):
        responses["422"] = _error_response(422)


def publish(app: FastAPI, *, unavailable: bool) -> None:
    """Replace `app.openapi` by one that documents the error contract."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        body = ErrorBody.model_json_schema(ref_template=REF, mode="serialization")
        schemas.update(body.pop("$defs", {}))
        schemas["ErrorBody"] = body
        for ops in spec.get("paths", {}).values():
            for op in ops.values():
                _complete(op, unavailable=unavailable)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
