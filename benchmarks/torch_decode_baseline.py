"""The plain-torch decode baseline: a Llama of the same shapes, static KV cache, one CUDA graph.

No custom kernel, no paging, no runtime: what 'just torch' reaches for one decode
step at a given batch and context. ``decode_latency.py`` times it in the same
run as actorexec. GPU only (bf16, dummy weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchLlama:
    """Weights as plain tensors; cache ``[layers, 2, batch, kv_heads, max_len, head_dim]``."""

    def __init__(self, hidden: int, inter: int, layers: int, heads: int, kv_heads: int,
                 vocab: int, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        d = hidden // heads
        self.h, self.kv, self.d = heads, kv_heads, d

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=dtype) * 0.02

        self.embed, self.lm_head = w(vocab, hidden), w(vocab, hidden)
        self.layers = [dict(qkv=w((heads + 2 * kv_heads) * d, hidden), o=w(hidden, heads * d),
                            gate_up=w(2 * inter, hidden), down=w(hidden, inter),
                            n1=torch.ones(hidden, device=device, dtype=dtype),
                            n2=torch.ones(hidden, device=device, dtype=dtype))
                       for _ in range(layers)]
        self.norm = torch.ones(hidden, device=device, dtype=dtype)
        self.cache = torch.zeros(layers, 2, batch, kv_heads, max_len, d, device=device,
                                 dtype=dtype)
        inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=device).float() / d))
        freqs = torch.outer(torch.arange(max_len, device=device).float(), inv)
        self.cos, self.sin = freqs.cos(), freqs.sin()
        self.max_len = max_len

    def weight_bytes(self) -> int:
        tensors = [self.embed, self.lm_head, self.norm] + [t for lay in self.layers
                                                            for t in lay.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @staticmethod
    def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]       # [B, 1, D/2]
        x1, x2 = x.float().chunk(2, -1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)

    def step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens, pos: [B] -> next tokens [B] (greedy). ``pos`` is a device tensor."""
        b = tokens.shape[0]
        x = F.embedding(tokens, self.embed)                               # [B, hidden]
        mask = (torch.arange(self.max_len, device=x.device)[None] <= pos[:, None])
        mask = mask[:, None, None, :]                                     # [B, 1, 1, max_len]
        for i, lay in enumerate(self.layers):
            qkv = self._rms(x, lay["n1"]) @ lay["qkv"].t()
            q, k, v = qkv.split([self.h * self.d, self.kv * self.d, self.kv * self.d], -1)
            q = self._rope(q.view(b, self.h, self.d), pos)
            k = self._rope(k.view(b, self.kv, self.d), pos)
            kc, vc = self.cache[i, 0], self.cache[i, 1]                   # [B, kv, max_len, D]
            idx = pos[:, None, None, None].expand(b, self.kv, 1, self.d)
            kc.scatter_(2, idx, k[:, :, None])
            vc.scatter_(2, idx, v.view(b, self.kv, 1, self.d))
            att = F.scaled_dot_product_attention(q[:, :, None], kc, vc, attn_mask=mask,
                                                 enable_gqa=True)         # [B, H, 1, D]
            x = x + att.reshape(b, -1) @ lay["o"].t()
            gu = self._rms(x, lay["n2"]) @ lay["gate_up"].t()
            g, u = gu.chunk(2, -1)
            x = x + (F.silu(g) * u) @ lay["down"].t()
        return (self._rms(x, self.norm) @ self.lm_head.t()).argmax(-1)


def time_graph_step(model: TorchLlama, batch: int, context: int, iters: int = 30) -> float:
    """Median ms of one CUDA-graph replay of ``step`` at position ``context``."""
    dev = model.embed.device
    tokens = torch.zeros(batch, dtype=torch.int64, device=dev)
    pos = torch.full((batch,), context, dtype=torch.int64, device=dev)
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model.step(tokens, pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model.step(tokens, pos)
        times = []
        for _ in range(iters + 5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    times = sorted(times[5:])
    return times[len(times) // 2]
