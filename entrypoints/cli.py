"""The ``actorexec`` command: ``serve`` (OpenAI-compatible server) and ``generate`` (streaming).

Mistakes a user can make print one line and exit 2; a failure of the engine
prints one line and exits 1; Ctrl-C exits quietly (130 while starting up or
generating; a server that shuts down cleanly exits 0). Only an unexpected
error (a bug) shows a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from actorexec.protocol import ActorexecError, RemoteError
from actorexec.runtime.loop import run

from .engine_args import UsageError
from .generate import add_generate_args, generate_main
from .serve import add_serve_args, serve_main

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``actorexec serve: error: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="actorexec", description="actorexec: serve or stream a local model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    serve = commands.add_parser("serve", help="start the OpenAI-compatible HTTP server",
                                description="Serve a local model over the OpenAI API "
                                            "(/v1/completions, /v1/chat/completions, /v1/models, "
                                            "/health, /metrics).")
    add_serve_args(serve)
    serve.set_defaults(func=serve_main)
    generate = commands.add_parser("generate", help="stream generated text for some prompts",
                                   description="Stream several prompts at once, token by token.")
    add_generate_args(generate)
    generate.set_defaults(func=generate_main)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):       # its str() carries the remote traceback
        return f"{exc.remote_type}: {exc.remote_message.splitlines()[0]}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    prog = f"actorexec {args.command}"
    logging.basicConfig(level=os.environ.get("ACTOREXEC_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command: Command = args.func
    try:
        code = run(command(args))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 2
    except ActorexecError as exc:
        print(f"{prog}: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
