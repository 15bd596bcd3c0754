"""Errors as the OpenAI API sends them: a status code and {"error": {...}}."""

from __future__ import annotations

from starlette.responses import JSONResponse

# The `type` OpenAI gives each status (its clients map statuses to exception classes).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "server_unavailable",
          500: "server_error", 504: "timeout_error"}


class ApiError(Exception):
    """A request that gets an error response; `param` names the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers  # e.g. Retry-After on a 503

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
