"""FAVOR+ linear self-attention (Performer, Choromanski et al. 2021) as used by HCT: cost linear in tokens.

Queries and keys go through positive random features phi so that softmax-like attention becomes
``phi(Q) (phi(K)^T V)`` normalised by ``phi(Q) sum(phi(K))``: memory O(N m + m d) instead of O(N^2).
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from torch import nn

Kernel = Literal["relu", "softmax"]


def default_nb_features(dim_head: int) -> int:
    """Number of random features m = int(d ln d), the Performer default (16, 44, 110 for d = 8, 16, 32)."""
    return int(dim_head * math.log(dim_head))


def gaussian_orthogonal_matrix(rows: int, cols: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (rows, cols) projection of stacked Haar-orthogonal blocks whose rows all have norm sqrt(cols), on the CPU.

    Rows within a block are exactly orthogonal (QR of a Gaussian block, signs fixed by diag(R)); the fixed row norm
    sqrt(d) is Performer's ``ortho_scaling=1``.
    """
    blocks = []
    for start in range(0, rows, cols):
        gaussian = torch.randn(cols, cols, generator=generator, device="cpu", dtype=torch.float32)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.T[: min(cols, rows - start)])
    return torch.cat(blocks) * math.sqrt(cols)


def relu_features(x: torch.Tensor, projection: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Generalised (ReLU) kernel features ReLU(d^-1/4 x W^T) + eps, the same map for queries and keys."""
    scaled = x * x.shape[-1] ** -0.25
    return torch.relu(scaled @ projection.T) + eps


def softmax_features(x: torch.Tensor, projection: torch.Tensor, *, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
    """Positive random features of the softmax kernel: m^-1/2 (exp(x~ W^T - |x~|^2 / 2 - stab) + eps), x~ = d^-1/4 x.

    The stabiliser ``stab`` is detached: the row maximum for queries (it cancels in the row normalisation) and the
    maximum over all tokens and features for keys (a constant factor for every key).
    """
    scaled = x * x.shape[-1] ** -0.25
    dash = scaled @ projection.T
    half_norm = 0.5 * scaled.pow(2).sum(dim=-1, keepdim=True)
    stab_dims = (-1,) if is_query else (-1, -2)
    stab = torch.amax(dash, dim=stab_dims, keepdim=True).detach()
    return projection.shape[0] ** -0.5 * (torch.exp(dash - half_norm - stab) + eps)


def linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal linear attention phi(Q)(phi(K)^T V) / (phi(Q) sum_n phi(K)) over (..., N, m) features."""
    context = phi_k.transpose(-1, -2) @ v  # (..., m, d)
    normaliser = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)  # (..., N, 1)
    return (phi_q @ context) / normaliser


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit quadratic softmax(Q K^T / sqrt(d)) V, the reference FAVOR+ approximates (tests and comparisons)."""
    weights = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    return weights @ v


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``device`` where autocast exists (not on e.g. the meta device)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class PerformerAttention(nn.Module):
    """Multi-head FAVOR+ self-attention over tokens (B, N, C) -> (B, N, C), as in HCT's AC blocks.

    Separate q, k, v ``Linear(C, C)`` with bias, ``heads`` heads of ``C / heads`` channels, a fixed Gaussian
    orthogonal projection (a persistent buffer, never redrawn, so model files keep it), the kernel maps run in
    float32 with autocast off, then an output ``Linear(C, C)`` and dropout on the output.
    """

    def __init__(self, dim: int, heads: int = 8, *, nb_features: int | None = None, kernel: Kernel = "relu",
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads; choose channels that are")
        if kernel not in ("relu", "softmax"):
            raise ValueError(f"unknown Performer kernel {kernel!r}; use 'relu' or 'softmax'")
        self.heads, self.dim_head, self.kernel = heads, dim // heads, kernel
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        m = nb_features or default_nb_features(self.dim_head)
        self.register_buffer("projection", torch.empty(m, self.dim_head))
        with torch.no_grad():
            self.projection.copy_(gaussian_orthogonal_matrix(m, self.dim_head))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads) in float32."""
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2).float()

    def features(self, t: torch.Tensor, *, is_query: bool) -> torch.Tensor:
        """Random features phi of per-head queries or keys (B, heads, N, d) -> (B, heads, N, m)."""
        projection = self.projection.float()
        if self.kernel == "relu":
            return relu_features(t, projection)
        return softmax_features(t, projection, is_query=is_query)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(x)), self._split(self.to_v(x))
        with _autocast_off(x.device):
            out = linear_attention(self.features(q, is_query=True), self.features(k, is_query=False), v)
        out = out.transpose(1, 2).reshape(b, n, c).to(x.dtype)
        return self.dropout(self.to_out(out))
