"""``actorexec serve``: the OpenAI-compatible server, in this process's event loop.

Order of start-up: bind the port (a port in use fails before any model is
loaded), start the engine, then serve. SIGINT (Ctrl-C) and SIGTERM stop
accepting, give open streams a few seconds, then shut the engine down (no
worker, socket or file is left behind); a second signal cuts the wait short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from actorexec.actors.engine import AsyncEngine

from .engine_args import UsageError, add_engine_args, config_from_args, resolve_model

if TYPE_CHECKING:
    import uvicorn

GRACEFUL_SHUTDOWN_S = 5


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    add_engine_args(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    parser.add_argument("--served-model-name", metavar="NAME", default=None,
                        help="the model name clients send (default: --model as given)")
    parser.add_argument("--api-key", metavar="KEY", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="uvicorn's log level (info shows each request)")


def bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: not a TCP port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None


@contextlib.contextmanager
def _signals(on_signal: object) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)      # type: ignore[arg-type]
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def check_serve_extra() -> None:
    missing = [name for name in ("starlette", "uvicorn", "prometheus_client", "jinja2")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"serving needs {', '.join(missing)}: pip install 'actorexec[serve]'")


async def serve_main(args: argparse.Namespace) -> int:
    check_serve_extra()
    import uvicorn

    from .openai.api_server import build_app

    sock = bind(args.host, args.port)
    model, default_name = resolve_model(args.model)
    config = config_from_args(args, model)
    name = args.served_model_name or default_name
    main_task = asyncio.current_task()
    server: uvicorn.Server | None = None
    shutdown = asyncio.Event()

    def on_signal() -> None:
        if server is None:                 # still starting: stop starting
            assert main_task is not None
            main_task.cancel()
        elif server.should_exit:           # second signal: stop waiting for connections
            server.force_exit = True
        else:
            shutdown.set()                 # open streams end now, with an error event
            server.should_exit = True

    with sock, _signals(on_signal):
        async with await AsyncEngine.create(config) as engine:
            app, _ = build_app(engine, name, args.api_key, shutdown)
            server = _server(uvicorn.Config(
                app, log_level=args.log_level, access_log=args.log_level in ("debug", "info"),
                lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
            host, port = sock.getsockname()[:2]
            url_host = f"[{host}]" if ":" in host else host
            if host in ("0.0.0.0", "::") and not args.api_key:
                print("actorexec serve: warning: listening on all interfaces without "
                      "--api-key", file=sys.stderr)
            print(f"actorexec: serving {name!r} at http://{url_host}:{port}/v1 "
                  f"({args.device}, tp={args.tp} pp={args.pp}, "
                  f"{engine.kv_cache_config.num_blocks} KV blocks); Ctrl-C stops", flush=True)
            await server.serve(sockets=[sock])
    print("actorexec: server stopped", flush=True)
    return 0


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's Server without its own signal handling: ``serve_main`` owns the signals, so
    a signal during start-up is handled too, and nothing is re-raised after shutdown."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)
