"""``actorexec generate``: streams several prompts concurrently, each token as it arrives.

    actorexec generate "The Program" "Permission is hereby" --max-tokens 64

On a terminal each prompt owns a coloured line that grows token by token
(all prompts at once: they are batched together). Piped, or with
``--lines``, every arrival is printed as its own ``[n] 'piece'`` line, so
the interleaving is visible in a log. A prompt the engine rejects (too long,
say) gets its one-line reason; the others go on.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time

from actorexec.actors.engine import AsyncEngine, RequestOutput
from actorexec.protocol import ActorexecError, InvalidRequestError, SamplingParams

from .engine_args import add_engine_args, config_from_args, resolve_model

DEFAULT_PROMPTS = ["This program is free software", "Permission is hereby granted",
                   "THE SOFTWARE IS PROVIDED", "You may obtain a copy"]
COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", help="prompts (default: four license openings)")
    add_engine_args(parser)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop string (repeatable); it is not printed")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--lines", action="store_true", help="one printed line per arrival")
    parser.add_argument("--no-color", action="store_true")


class View:
    """Prints arrivals: a growing line per prompt on a terminal, else one line per arrival."""

    def __init__(self, prompts: list[str], live: bool, colour: bool) -> None:
        self.texts = list(prompts)
        self.live = live
        self.colours = COLOURS if colour else [""]
        self.reset = RESET if colour else ""
        for i, p in enumerate(prompts):
            print(self._line(i, p) if live else f"{self._c(i)}[{i}] prompt: {p!r}{self.reset}")
        sys.stdout.flush()

    def _c(self, i: int) -> str:
        return self.colours[i % len(self.colours)]

    def _line(self, i: int, text: str, end: str = "") -> str:
        width = max(shutil.get_terminal_size().columns - 6 - len(end), 10)
        flat = text.replace("\n", "↵")
        flat = flat if len(flat) <= width else "…" + flat[-(width - 1):]
        return f"{self._c(i)}[{i}] {flat}{end}{self.reset}"

    def show(self, i: int, piece: str, end: str = "") -> None:
        self.texts[i] += piece
        if self.live:
            up = len(self.texts) - i     # the cursor sits below the last prompt's line
            sys.stdout.write(f"\033[{up}A\r\033[2K{self._line(i, self.texts[i], end)}"
                             f"\033[{up}B\r")
        else:
            sys.stdout.write(f"{self._c(i)}[{i}] {piece!r}{end}{self.reset}\n")
        sys.stdout.flush()

    def update(self, i: int, out: RequestOutput, piece: str) -> None:
        end = f"  <{out.finish_reason.value}>" if out.finished and out.finish_reason else ""
        self.show(i, piece, end)


async def stream_one(engine: AsyncEngine, i: int, prompt: str, params: SamplingParams,
                     stop: list[str], view: View) -> int:
    """Streams one prompt; returns its token count (0 when the engine rejected it)."""
    n = 0
    try:
        async for out in engine.generate(prompt, params, request_id=f"prompt-{i}", stop=stop):
            n += len(out.new_token_ids)
            piece = out.text if engine.tokenizer is not None else \
                "".join(f" {t}" for t in out.new_token_ids)
            view.update(i, out, piece)
    except InvalidRequestError as exc:
        view.show(i, "", f"  <rejected: {exc}>")
    return n


async def generate_main(args: argparse.Namespace) -> int:
    model, _ = resolve_model(args.model)
    config = config_from_args(args, model)
    prompts = args.prompts or DEFAULT_PROMPTS
    t0 = time.perf_counter()
    async with await AsyncEngine.create(config) as engine:
        print(f"model {model} | {args.device} tp={args.tp} pp={args.pp} | "
              f"KV blocks {engine.kv_cache_config.num_blocks} | ready in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        live = sys.stdout.isatty() and not args.lines
        view = View(prompts, live, colour=not args.no_color and sys.stdout.isatty())
        t1 = time.perf_counter()
        results = await asyncio.gather(*(stream_one(engine, i, p, SamplingParams(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            seed=args.seed + i, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos),
            args.stop, view) for i, p in enumerate(prompts)), return_exceptions=True)
        dt = time.perf_counter() - t1
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # Every stream fails with the same engine error: report it once.
            if isinstance(failures[0], ActorexecError):
                print(f"\nthe engine failed: {str(failures[0]).splitlines()[0]}",
                      file=sys.stderr)
                return 1
            raise failures[0]
        counts = [r for r in results if isinstance(r, int)]
        if not live and engine.tokenizer is not None:
            print("\nfull texts:")
            for i, text in enumerate(view.texts):
                print(f"[{i}] {text!r}")
        print(f"{sum(counts)} tokens for {len(prompts)} prompts in {dt:.2f}s "
              f"({sum(counts) / dt:.0f} tok/s)")
    return 0
