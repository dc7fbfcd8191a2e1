"""xT's context encoder: LLaMA-style causal Transformer over region tokens, in full and streaming (Transformer-XL) form.

Full form (released ``xl`` head): every coarse token of the image in one causal sequence, CLS appended at the end.
Streaming form (pre-release): regions one at a time; each layer attends over its own inputs of the ``mem_chip - 1``
previous regions (detached memory) plus the current region causally, so cost and memory per step are bounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Memory = list[torch.Tensor]


def sincos_2d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE 2D sin-cos embedding (N, dim) of integer (row, col) ``coords`` (N, 2): first half columns, then rows."""
    if dim % 4:
        raise ValueError(f"the context encoder's hidden size must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=coords.device, dtype=torch.float32) / (dim // 4))
    parts = []
    for axis in (1, 0):  # MAE's meshgrid puts the width coordinate first
        angles = coords[:, axis].to(torch.float32)[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def grid_coords(h: int, w: int, row0: int = 0, col0: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, 2) global (row, col) of an h x w token grid whose top-left token sits at (row0, col0), raster order."""
    rows = torch.arange(row0, row0 + h, device=device)
    cols = torch.arange(col0, col0 + w, device=device)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def banded_causal_mask(n: int, region_len: int, mem_chip: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, n) bool mask, True = may attend: causal, and no further back than ``mem_chip - 1`` whole regions.

    Token t belongs to region ``t // region_len``; a trailing CLS (n not a multiple) belongs to the last region.
    """
    n_regions = max(1, n // region_len)
    region = (torch.arange(n, device=device) // region_len).clamp(max=n_regions - 1)
    pos = torch.arange(n, device=device)
    causal = pos[None, :] <= pos[:, None]
    near = region[None, :] >= region[:, None] - (mem_chip - 1)
    return causal & near


class RMSNorm(nn.Module):
    """LLaMA RMSNorm, computed in at least fp32 whatever the input precision."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class GatedMLP(nn.Module):
    """LLaMA MLP without biases: down(GELU(gate x) * up x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.gate(x)) * self.up(x))


class CausalAttention(nn.Module):
    """Multi-head attention, qkv and output with bias; queries are the current tokens, keys [memory, current]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, L, D) current tokens, ``mem`` (B, M, D) earlier ones; ``attn_mask`` (L, M+L) replaces causality."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if mem is not None:
            _, km, vm = self.qkv(mem).chunk(3, dim=-1)
            k, v = torch.cat([km, k], dim=1), torch.cat([vm, v], dim=1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if attn_mask is None and mem is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if attn_mask is None:  # causal aligned bottom-right: current token i sees all memory and tokens <= i
                n_mem, n = k.shape[2] - q.shape[2], q.shape[2]
                attn_mask = torch.arange(n_mem + n, device=x.device)[None, :] <= \
                    torch.arange(n, device=x.device)[:, None] + n_mem
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class ContextLayer(nn.Module):
    """Pre-norm LLaMA layer: x + Attn(RMSNorm x), then x + MLP(RMSNorm x); memory enters attention keys only."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = CausalAttention(dim, num_heads)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = GatedMLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        m = None if mem is None else self.attn_norm(mem)
        x = x + self.attn(self.attn_norm(x), m, attn_mask)
        return x + self.mlp(self.mlp_norm(x))


class ContextEncoder(nn.Module):
    """Coarse region tokens (B, N, in_dim) -> hidden states (B, N[+1], hidden): Linear, global sin-cos, causal layers.

    ``num_heads`` defaults to ``hidden // 128`` as in the release (6 for 768). ``out_proj`` adds the Linear back to
    ``in_dim`` used to add context to the region features (segmentation); ``cls_token`` adds the CLS (classification).
    """

    def __init__(self, in_dim: int, hidden: int = 768, depth: int = 2, num_heads: int | None = None,
                 mlp_hidden: int = 3072, mem_chip: int = 4, cls_token: bool = False, out_proj: bool = False) -> None:
        super().__init__()
        if mem_chip < 1:
            raise ValueError(f"mem_chip counts the current region, so it must be >= 1, got {mem_chip}")
        self.hidden, self.mem_chip = hidden, mem_chip
        heads = num_heads or max(1, hidden // 128)
        self.input_proj = nn.Linear(in_dim, hidden)
        self.layers = nn.ModuleList(ContextLayer(hidden, heads, mlp_hidden) for _ in range(depth))
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 1e-6) if cls_token else None
        self.output_proj = nn.Linear(hidden, in_dim) if out_proj else None

    def embed(self, tokens: torch.Tensor, coords: torch.Tensor, append_cls: bool) -> torch.Tensor:
        """Project tokens, add the sin-cos embedding of their global (row, col), append CLS at the end if asked."""
        x = self.input_proj(tokens) + sincos_2d(coords, self.hidden).to(tokens.dtype)
        if append_cls:
            if self.cls_token is None:
                raise ValueError("this context encoder was built without a CLS token (cls_token=False)")
            x = torch.cat([x, self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        return x

    def forward(self, tokens: torch.Tensor, coords: torch.Tensor, append_cls: bool = False) -> torch.Tensor:
        """Full form: exact causal attention over the whole sequence (tokens in the order given)."""
        x = self.embed(tokens, coords, append_cls)
        for layer in self.layers:
            x = layer(x)
        return x

    def step(self, tokens: torch.Tensor, coords: torch.Tensor, memory: Memory | None,
             append_cls: bool = False) -> tuple[torch.Tensor, Memory]:
        """Streaming form, one region: attend over the memory (earlier regions' layer inputs) and causally within.

        Returns the hidden states of this region and the new memory: per layer, the detached inputs of the last
        ``mem_chip - 1`` regions (this one included), so one step never holds more than ``mem_chip`` regions.
        """
        n = tokens.shape[1]
        keep = (self.mem_chip - 1) * n
        x = self.embed(tokens, coords, append_cls)
        new_memory: Memory = []
        for i, layer in enumerate(self.layers):
            mem = memory[i] if memory else None
            if keep:
                region_inputs = x[:, :n] if mem is None else torch.cat([mem, x[:, :n]], dim=1)
                new_memory.append(region_inputs[:, -keep:].detach())
            x = layer(x, mem)
        return x, new_memory

    def forward_banded(self, tokens: torch.Tensor, coords: torch.Tensor, region_len: int,
                       append_cls: bool = False) -> torch.Tensor:
        """Reference for :meth:`step`: the whole region sequence at once under the equivalent banded causal mask."""
        x = self.embed(tokens, coords, append_cls)
        mask = banded_causal_mask(x.shape[1], region_len, self.mem_chip, x.device)
        for layer in self.layers:
            x = layer(x, attn_mask=mask)
        return x
