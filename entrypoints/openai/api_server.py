"""The OpenAI-compatible HTTP app: routes, API-key check, errors in OpenAI's shape.

Built on Starlette (the ASGI toolkit FastAPI is made of) and served by uvicorn:
both are maintained by the Encode team and used by vLLM and SGLang, uvicorn runs
on uvloop, and Starlette brings no validation layer of its own, so request
bodies go through the same msgspec typing as the rest of actorexec instead of
a second (pydantic) schema system. The app runs in the caller's event loop,
next to the engine it drives: no thread, no queue between them.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actorexec.actors.engine import AsyncEngine

from .errors import APIError, json_response
from .metrics import CONTENT_TYPE, ServerMetrics
from .serving_chat import ChatServing
from .serving_completion import CompletionServing

Scope = dict[str, Any]


class APIKeyCheck:
    """ASGI middleware: ``/v1/*`` needs ``Authorization: Bearer <key>`` when a key is set.

    ``/health`` and ``/metrics`` stay open, as in vLLM (probes and scrapers).
    """

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):   # constant time
                error = APIError(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.",
                                 code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
              shutdown: asyncio.Event | None = None) -> tuple[Any, ServerMetrics]:
    """The ASGI app serving ``engine`` as ``model_name``, and its metrics.

    Setting ``shutdown`` ends open streams (error event, ``[DONE]``) and makes
    new requests 503, so the HTTP server's graceful shutdown is quick.
    """
    metrics = ServerMetrics(engine, model_name)
    shutdown = shutdown or asyncio.Event()
    generation = (engine, model_name, metrics, shutdown)
    created = int(time.time())

    async def models(request: Request) -> Response:
        return json_response({"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "actorexec",
            "root": engine.config.model.model, "max_model_len": engine.max_model_len}]})

    async def health(request: Request) -> Response:
        if engine.is_failed:
            return APIError(HTTPStatus.SERVICE_UNAVAILABLE, "the engine has failed",
                            type="service_unavailable", code="engine_failed").response()
        if engine.is_restarting:        # degraded: requests queue and resume after it
            return APIError(HTTPStatus.SERVICE_UNAVAILABLE, "degraded: the engine is "
                            "restarting its executor; requests are queued meanwhile",
                            type="service_unavailable", code="engine_restarting").response()
        return Response(status_code=200)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return APIError(exc.status_code, exc.detail or HTTPStatus(exc.status_code).phrase,
                        ).response()

    app = Starlette(routes=[
        Route("/v1/completions", CompletionServing(*generation).handle,
              methods=["POST"]),
        Route("/v1/chat/completions", ChatServing(*generation).handle,
              methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ], exception_handlers={APIError: api_error, HTTPException: http_error})
    return (APIKeyCheck(app, api_key) if api_key else app), metrics
