"""Errors a handler raises; each becomes a JSON response naming the field.

    ApiError(status, code, message, field)
    ├── BadRequest      400/422  input is wrong; `field` names it
    ├── Unauthorized    401      wrong credentials
    ├── NotFound        404      an id that does not exist; `field` names it
    ├── Conflict        409      e.g. not enough stock
    ├── PaymentDeclined 402
    └── Unavailable     503      a store or peer is down / pool exhausted
                                 (with Retry-After)

Third-party errors (psycopg, redis, aiohttp) are translated where they enter:
in common/db.py, common/peers.py and common/cache.py.
"""

from __future__ import annotations

__all__ = ["ApiError", "BadRequest", "NotFound", "Conflict", "PaymentDeclined", "Unavailable",
           "Unauthorized"]


class ApiError(Exception):
    status = 500
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}

    def body(self) -> dict:
        d = {"error": self.code, "message": self.message}
        if self.field is not None:
            d["field"] = self.field
        d.update(self.extra)
        return d


class BadRequest(ApiError):
    status = 422
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PaymentDeclined(ApiError):
    status = 402
    code = "payment_declined"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after
