"""Attention backends behind one call: attention(q, k, v, backend=...).

Tensors are batch-first [batch, seq, heads, head_dim] (the project convention; a
sequence-parallel backend exchanges the seq and heads dimensions across ranks around the
local kernel). `backend` is a name or any callable with the same signature, so a
sequence-parallel wrapper plugs in without touching the model.

Names (config key model.attention):
  sdpa   torch.nn.functional.scaled_dot_product_attention (default): torch picks its flash,
         memory-efficient or math kernel for the device and dtype
  flash  flash-attn's flash_attn_func (pip install 'seqvit[flash]'); needs a CUDA or ROCm GPU
         and fp16/bf16 tensors; never required
  math   explicit softmax(q k^T / sqrt(d)) v, the reference
  auto   flash where flash-attn is installed and the tensors are fp16/bf16 on a GPU, else sdpa
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqvit.errors import SeqvitError

BACKENDS = ("auto", "sdpa", "flash", "math")
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def flash_available() -> bool:
    """flash-attn importable and a CUDA/ROCm device present (import guarded: never required)."""
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend) -> None:
    """Refuse, before training, a backend name that is unknown or cannot run here."""
    if callable(backend):
        return
    if backend not in BACKENDS:
        raise SeqvitError(f"unknown attention backend {backend!r} (config key model.attention); use one of {BACKENDS}")
    if backend == "flash" and not flash_available():
        raise SeqvitError(
            "config key model.attention: flash needs flash-attn (pip install 'seqvit[flash]') and a CUDA or "
            "ROCm GPU; neither is required: use sdpa (or auto, which picks flash only where it can run)"
        )


def resolve_backend(backend: str, q) -> str:
    """The concrete kernel name for `backend` and tensors like q (`auto` -> flash or sdpa)."""
    if backend == "auto":
        return "flash" if q.is_cuda and q.dtype in _FLASH_DTYPES and flash_available() else "sdpa"
    return backend


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


def flash_attention(q, k, v, dropout_p: float = 0.0):
    """flash-attn's kernel; it takes [batch, seq, heads, head_dim] as is."""
    if not (q.is_cuda and q.dtype in _FLASH_DTYPES):
        raise SeqvitError(
            f"attention backend flash needs fp16/bf16 tensors on a CUDA or ROCm GPU, got {q.dtype} on "
            f"{q.device}; use model.attention: sdpa or auto"
        )
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:
        raise SeqvitError("attention backend flash needs flash-attn: pip install 'seqvit[flash]'") from exc
    return flash_attn_func(q, k, v, dropout_p=dropout_p)


def attention(q, k, v, backend="sdpa", dropout_p: float = 0.0):
    """Multi-head attention over the seq dimension of [batch, seq, heads, head_dim] tensors."""
    _check(q, k, v)
    if callable(backend):
        return backend(q, k, v, dropout_p=dropout_p)
    if backend == "auto":
        backend = resolve_backend(backend, q)
    if backend == "flash":
        return flash_attention(q, k, v, dropout_p)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, dropout_p)
    if backend == "math":
        return math_attention(q, k, v, dropout_p)
    raise SeqvitError(f"unknown attention backend {backend!r} (config key model.attention); use one of {BACKENDS}")
