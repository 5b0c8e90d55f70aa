"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` + status."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec
from starlette.responses import Response


class APIError(Exception):
    """An error the API reports to the client with its status; raised by the handlers."""

    def __init__(self, status: int, message: str, type: str | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> Response:
        return json_response(self.body(), status=self.status)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param)


def engine_unavailable(message: str) -> APIError:
    return APIError(HTTPStatus.SERVICE_UNAVAILABLE, message, type="service_unavailable",
                    code="engine_failed")


_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")
