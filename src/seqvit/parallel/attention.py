"""Attention backends behind one call: attention(q, k, v, backend=...).

Tensors are batch-first [batch, seq, heads, head_dim] (the project convention; a
sequence-parallel backend exchanges the seq and heads dimensions across ranks around the
local kernel). `backend` is a name or any callable with the same signature, so a
sequence-parallel wrapper plugs in without touching the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqvit.errors import SeqvitError

BACKENDS = ("sdpa", "math")


def _check(q, k, v) -> None:
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise SeqvitError(
            f"attention expects q, k, v as [batch, seq, heads, head_dim] with matching batch, heads "
            f"and head_dim; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def sdpa_attention(q, k, v, dropout_p: float = 0.0):
    """torch's fused kernel (flash / memory-efficient / math, whichever torch picks)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p)
    return out.transpose(1, 2)


def math_attention(q, k, v, dropout_p: float = 0.0):
    """Explicit softmax(q k^T / sqrt(d)) v: the readable reference the fused kernels must match."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


def attention(q, k, v, backend="sdpa", dropout_p: float = 0.0):
    """Multi-head attention over the seq dimension of [batch, seq, heads, head_dim] tensors."""
    _check(q, k, v)
    if callable(backend):
        return backend(q, k, v, dropout_p=dropout_p)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, dropout_p)
    if backend == "math":
        return math_attention(q, k, v, dropout_p)
    raise SeqvitError(f"unknown attention backend {backend!r} (config key model.attention); use one of {BACKENDS}")
