"""Local attention kernels behind one call: attention(q, k, v, backend=...).

Tensors are batch-first [batch, seq, heads, head_dim] (the project convention; a
sequence-parallel backend exchanges the seq and heads dimensions across ranks around the
local kernel). `backend` is a name or any callable with the same signature, so a
sequence-parallel wrapper plugs in without the model knowing of it.

Names (config key model.attention):
  sdpa   torch.nn.functional.scaled_dot_product_attention: torch picks its kernel (below)
  flash  flash-attn's flash_attn_func (pip install 'seqvit[flash]'); never required, refused
         before training where it cannot run
  math   explicit softmax(q k^T / sqrt(d)) v, the reference
  auto   flash where flash_unsupported() finds nothing against it, else sdpa

Where flash-attn runs (flash_unsupported). The flash-attn README lists for FlashAttention-2:
on CUDA, Ampere, Ada or Hopper GPUs (compute capability 8.x, 9.x), fp16 and bf16, head
dimensions up to 256; on ROCm (composable_kernel backend), MI200 or MI300 GPUs (gfx90a,
gfx94x), fp16 and bf16, head dimensions up to 256 forward but only up to 128 backward, so
training there takes at most 128. Its Python wrapper pads a head dimension that is not a
multiple of 8 itself. Everything else (fp32 tensors, CPUs, other GPUs) goes to SDPA under auto.
The device is read through describe_device(), the one seam a test replaces to run the flash
call path on CPU tensors; the gate itself is the same everywhere.

Which SDPA kernel runs. PyTorch's documentation of scaled_dot_product_attention names three
implementations (FlashAttention-2, Memory-Efficient Attention, a C++ math reference), and
torch.nn.attention.SDPBackend adds CUDNN_ATTENTION (cuDNN) on newer torch;
torch.nn.attention.sdpa_kernel restricts the choice.
  Hopper (H100, H200), fp16/bf16: SDPA's FlashAttention-2 kernel; cuDNN attention, although
    supported there, was not picked by SDPA itself (pytorch/pytorch issue 142132, torch 2.6) and
    runs when sdpa_kernel asks for it.
  MI250X (ROCm, gfx90a): PyTorch's ROCm build takes both its flash and its memory-efficient
    kernel from AOTriton (PyTorch's cmake/External/aotriton.cmake; AOTriton 0.4 release notes:
    the FlashAttention-2 algorithm on MI200/MI300).
benchmarks/gpu_check.py records which backends run on a GPU, which one SDPA picks with the torch
at hand, and how fast each is.

Log-sum-exp: flash and math can also return lse[b, h, i] = log sum_j exp(scale q_i . k_j), in
fp32, as flash-attn 2 does with return_attn_probs=True ((out, softmax_lse, S_dmask)); a method
that merges partial attentions needs it. It carries no gradient (flash-attn's backward ignores
it); SDPA does not expose it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seqvit.errors import SeqvitError

BACKENDS = ("auto", "sdpa", "flash", "math")
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_CUDA_MAJORS = (8, 9)  # Ampere, Ada (8.x), Hopper (9.x)
FLASH_ROCM_ARCHS = ("gfx90a", "gfx940", "gfx941", "gfx942")  # MI200, MI300
FLASH_MAX_HEAD_DIM = {"cuda": 256, "rocm": 128}  # ROCm: the backward pass's limit


@dataclass(frozen=True)
class DeviceInfo:
    """What decides whether flash-attn runs on a device."""

    kind: str  # "cpu", "cuda" (NVIDIA) or "rocm" (AMD); other torch device types as named
    capability: tuple[int, int] | None = None  # CUDA compute capability
    arch: str | None = None  # ROCm gfx architecture, e.g. gfx90a (MI250X)
    name: str = ""

    def __str__(self) -> str:
        detail = f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else self.arch
        return " ".join(part for part in (self.kind, detail, self.name and f"({self.name})") if part)


def describe_device(device) -> DeviceInfo:
    """The DeviceInfo of a torch device (ROCm builds of torch call their GPUs "cuda" too)."""
    device = torch.device(device)
    if device.type != "cuda":
        return DeviceInfo(device.type)
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip:
        return DeviceInfo("rocm", arch=str(props.gcnArchName).split(":")[0], name=props.name)
    return DeviceInfo("cuda", capability=(props.major, props.minor), name=props.name)


_flash_import_error: str | None = None


def _flash_module():
    """flash-attn's module, or None when it does not import (the reason is kept for the error)."""
    global _flash_import_error
    module = sys.modules.get("flash_attn")
    if module is not None:
        return module
    if _flash_import_error is not None:  # a failed import is not retried on every attention call
        return None
    try:
        import flash_attn as module
    except ImportError as exc:
        _flash_import_error = str(exc) or type(exc).__name__
        return None
    return module


def flash_installed() -> bool:
    return _flash_module() is not None


def flash_unsupported(device: DeviceInfo, dtype=None, head_dim=None, installed: bool = True) -> str | None:
    """Why flash-attn cannot run here, or None when it can; dtype and head_dim None: not checked."""
    if not installed:
        return "flash-attn is not installed (pip install 'seqvit[flash]')"
    if device.kind == "cuda":
        if device.capability is None or device.capability[0] not in FLASH_CUDA_MAJORS:
            return f"flash-attn 2 runs on Ampere, Ada or Hopper GPUs (compute capability 8.x, 9.x), not {device}"
    elif device.kind == "rocm":
        if device.arch not in FLASH_ROCM_ARCHS:
            return f"flash-attn 2 on ROCm runs on MI200 or MI300 GPUs ({', '.join(FLASH_ROCM_ARCHS)}), not {device}"
    else:
        return f"flash-attn needs a CUDA or ROCm GPU, not {device}"
    if dtype is not None and dtype not in FLASH_DTYPES:
        return f"flash-attn takes fp16/bf16 tensors, not {dtype}"
    limit = FLASH_MAX_HEAD_DIM[device.kind]
    if head_dim is not None and not 0 < head_dim <= limit:
        return f"flash-attn on {device.kind} trains head dimensions up to {limit}, not {head_dim}"
    return None


def _current_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def flash_available() -> bool:
    """flash-attn installed and this process's GPU one it runs on (any dtype and head size aside)."""
    return flash_unsupported(describe_device(_current_device()), installed=flash_installed()) is None


def check_backend(backend) -> None:
    """Refuse, before training, a backend name that is unknown or cannot run here."""
    if callable(backend):
        return
    if backend not in BACKENDS:
        raise SeqvitError(f"unknown attention backend {backend!r} (config key model.attention); use one of {BACKENDS}")
    if backend == "flash":
        reason = flash_unsupported(describe_device(_current_device()), installed=flash_installed())
        if reason is not None:
            raise SeqvitError(
                f"config key model.attention: flash needs flash-attn and a CUDA or ROCm GPU it supports, but "
                f"{reason}{_import_detail()}; neither is required: use sdpa (or auto, which picks flash only "
                f"where it can run)"
            )


def _import_detail() -> str:
    return f" (import failed: {_flash_import_error})" if _flash_import_error and not flash_installed() else ""


def resolve_backend(backend: str, q) -> str:
    """The concrete kernel name for `backend` and tensors like q (`auto` -> flash or sdpa)."""
    if backend == "auto":
        reason = flash_unsupported(describe_device(q.device), q.dtype, q.shape[-1], installed=flash_installed())
        return "flash" if reason is None else "sdpa"
    return backend


def _check(q, k, v) -> None:
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise SeqvitError(
            f"attention expects q, k, v as [batch, seq, heads, head_dim] with matching batch, heads "
            f"and head_dim; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def sdpa_attention(q, k, v, dropout_p: float = 0.0):
    """torch's fused kernel (flash / memory-efficient / cuDNN / math, whichever torch picks)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p)
    return out.transpose(1, 2)


def math_attention(q, k, v, dropout_p: float = 0.0, return_lse: bool = False):
    """Explicit softmax(q k^T / sqrt(d)) v: the readable reference the fused kernels must match."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, v)
    if return_lse:
        return out, torch.logsumexp(scores.detach().float(), dim=-1)
    return out


def flash_attention(q, k, v, dropout_p: float = 0.0, return_lse: bool = False):
    """flash-attn's kernel; it takes [batch, seq, heads, head_dim] as is."""
    module = _flash_module()
    reason = flash_unsupported(describe_device(q.device), q.dtype, q.shape[-1], installed=module is not None)
    if reason is not None:
        raise SeqvitError(
            f"attention backend flash cannot run here: {reason}{_import_detail()}; use model.attention: sdpa or auto"
        )
    # scale given explicitly: the same 1/sqrt(d) as every other kernel, whatever flash-attn's default
    scale = 1.0 / math.sqrt(q.shape[-1])
    if not return_lse:
        return module.flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale)
    out, lse, _ = module.flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale, return_attn_probs=True)
    return out, lse


def attention(q, k, v, backend="sdpa", dropout_p: float = 0.0, return_lse: bool = False):
    """Multi-head attention over the seq dimension of [batch, seq, heads, head_dim] tensors.

    return_lse: also return the log-sum-exp [batch, heads, seq] (fp32, no gradient); flash and
    math give it, and auto then resolves to math where flash cannot run.
    """
    _check(q, k, v)
    if callable(backend):
        if return_lse:
            raise SeqvitError("a callable attention backend returns no log-sum-exp; use flash, math or auto")
        return backend(q, k, v, dropout_p=dropout_p)
    if backend == "auto":
        backend = resolve_backend(backend, q)
        if return_lse and backend == "sdpa":
            backend = "math"
    if backend == "flash":
        return flash_attention(q, k, v, dropout_p, return_lse)
    if backend == "math":
        return math_attention(q, k, v, dropout_p, return_lse)
    if backend == "sdpa":
        if return_lse:
            raise SeqvitError("attention backend sdpa returns no log-sum-exp; use flash, math or auto")
        return sdpa_attention(q, k, v, dropout_p)
    raise SeqvitError(f"unknown attention backend {backend!r} (config key model.attention); use one of {BACKENDS}")
