"""Trains the default model once, so the demo prints readable (license-flavoured) text.

Not needed to use actorexec: the result is shipped as
``actors/engine/default_model_data/model.safetensors``. This script records
how it was made. It needs transformers (a test dependency) for the
reference Llama implementation, and trains a byte-level tiny Llama on the
plain-text licenses in /usr/share/common-licenses (on every Debian/Ubuntu
machine, offline) for a few CPU minutes.

    python examples/train_default_model.py --steps 600 --threads 1

It writes to a new directory (``trained-default-model-<time>/``) unless told
otherwise; to replace the shipped weights, ask for it:
``--out actors/engine/default_model_data``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from actorexec.actors.engine.default_model import CONFIG, DATA_DIR
from actorexec.actors.engine.tokenizer import ByteTokenizer


def corpus(root: Path) -> bytes:
    texts = [p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()]
    return b"\n\n".join(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/usr/share/common-licenses")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=f"trained-default-model-{time.strftime('%Y%m%d-%H%M%S')}",
                    help=f"output directory (a new one by default; the shipped weights are in "
                         f"{DATA_DIR})")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = ByteTokenizer(add_bos=False)
    data = torch.tensor(tok.encode(corpus(Path(args.corpus)).decode("utf-8", "replace")))
    print(f"corpus: {len(data)} bytes")
    cfg = {k: v for k, v in CONFIG.items() if k not in ("architectures", "model_type")}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps,
                                                pct_start=0.05)
    t0 = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,))
        x = torch.stack([data[s:s + args.seq + 1] for s in starts])
        x[:, 0] = tok.bos_token_id       # the engine's prompts start with BOS
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {out / 'model.safetensors'}")
    if out.resolve() != DATA_DIR.resolve():
        print(f"to ship it: --out {DATA_DIR} (or copy it there)")


if __name__ == "__main__":
    main()
