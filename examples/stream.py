"""Streams several prompts concurrently, each token printed as it arrives.

    python examples/stream.py "The Program" "Permission is hereby" --max-tokens 64

On a terminal each prompt owns a coloured line that grows token by token
(all prompts at once: they are batched together). Piped, or with
``--lines``, every arrival is printed as its own ``[n] 'piece'`` line, so
the interleaving is visible in a log. With no ``--model`` the default model
is made on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time

from actorexec.actors.engine import AsyncEngine, RequestOutput, ensure_default_model
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    SamplingParams,
)

DEFAULT_PROMPTS = ["This program is free software", "Permission is hereby granted",
                   "THE SOFTWARE IS PROVIDED", "You may obtain a copy"]
COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prompts", nargs="*", help="prompts (default: four license openings)")
    ap.add_argument("--model", help="local HF-format Llama/Qwen2/Qwen3 directory "
                    "(default: the built-in default model)")
    ap.add_argument("--backend", choices=["uni", "mp"], default=None,
                    help="executor backend (default: uni for one rank, mp for more)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    ap.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="per-request seeds are seed + index")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--lines", action="store_true", help="one printed line per arrival")
    ap.add_argument("--no-color", action="store_true")
    return ap.parse_args()


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
        width = shutil.get_terminal_size().columns - 6 - len(end)
        flat = text.replace("\n", "↵")
        flat = flat if len(flat) <= width else "…" + flat[-(width - 1):]
        return f"{self._c(i)}[{i}] {flat}{end}{self.reset}"

    def update(self, i: int, out: RequestOutput, piece: str) -> None:
        self.texts[i] += piece
        end = f"  <{out.finish_reason.value}>" if out.finished and out.finish_reason else ""
        if self.live:
            up = len(self.texts) - i     # cursor sits below the last prompt's line
            sys.stdout.write(f"\033[{up}A\r\033[2K{self._line(i, self.texts[i], end)}"
                             f"\033[{up}B\r")
        else:
            sys.stdout.write(f"{self._c(i)}[{i}] {piece!r}{end}{self.reset}\n")
        sys.stdout.flush()


async def stream_one(engine: AsyncEngine, i: int, prompt: str, params: SamplingParams,
                     view: View) -> int:
    n = 0
    async for out in engine.generate(prompt, params, request_id=f"prompt-{i}"):
        n += len(out.new_token_ids)
        piece = out.text if engine.tokenizer is not None else \
            "".join(f" {t}" for t in out.new_token_ids)
        view.update(i, out, piece)
    return n


async def main(args: argparse.Namespace) -> None:
    model = args.model or str(ensure_default_model())
    prompts = args.prompts or DEFAULT_PROMPTS
    config = Config(
        model=ModelConfig(model=model, seed=args.seed),
        cache=CacheConfig(),
        parallel=ParallelConfig(tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp,
                                distributed_executor_backend=args.backend),
        device=DeviceConfig(device=args.device))
    t0 = time.perf_counter()
    async with await AsyncEngine.create(config) as engine:
        print(f"model {model} | {args.device} tp={args.tp} pp={args.pp} | "
              f"KV blocks {engine.kv_cache_config.num_blocks} | ready in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        live = sys.stdout.isatty() and not args.lines
        view = View(prompts, live, colour=not args.no_color and sys.stdout.isatty())
        t1 = time.perf_counter()
        counts = await asyncio.gather(*(stream_one(engine, i, p, SamplingParams(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            seed=args.seed + i, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos), view)
            for i, p in enumerate(prompts)))
        dt = time.perf_counter() - t1
        if not live and engine.tokenizer is not None:
            print("\nfull texts:")
            for i, text in enumerate(view.texts):
                print(f"[{i}] {text!r}")
        print(f"{sum(counts)} tokens for {len(prompts)} prompts in {dt:.2f}s "
              f"({sum(counts) / dt:.0f} tok/s)")


def run() -> None:
    args = parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(args))


if __name__ == "__main__":
    run()
