"""The cockpit API's one error: a 4xx (or 5xx from a part it drives) as
JSON `{error, field, message}` naming the field, never a traceback."""

from __future__ import annotations

__all__ = ["ApiError", "ERRORS"]

ERRORS = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 409: "conflict",
          415: "unsupported-media-type", 502: "bad-gateway", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.message = message

    def body(self) -> dict:
        return {"error": ERRORS.get(self.status, "error"), "field": self.field, "message": self.message}
