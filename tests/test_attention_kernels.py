"""The local attention kernels: when `auto` picks flash-attn, and the flash-attn call path on CPU.

flash-attn runs only on GPUs, so its call path (the [batch, seq, heads, head_dim] layout it
takes as is, softmax_scale, dropout_p, the (out, softmax_lse, S_dmask) triple of
return_attn_probs=True) is checked here against torch's SDPA through a stand-in: a module
`flash_attn` whose flash_attn_func has flash-attn 2's signature and documented semantics
(flash_attn/flash_attn_interface.py: inputs [batch, seqlen, nheads, headdim], fp16/bf16 only,
head dimensions up to 256, scale default 1/sqrt(headdim), softmax_lse [batch, nheads, seqlen]
in fp32, S_dmask only with dropout), written here from that documentation and installed in
sys.modules only inside these tests. This is the one place a stand-in is justified: the real
kernel cannot run on the machines the suite runs on. The project code runs unchanged, except
that describe_device() declares the CPU a Hopper GPU; the gate that reads it is the production
one, and without that declaration it refuses (test_the_gate_refuses_the_cpu_itself).

Which devices, dtypes and head sizes get flash-attn (EXPECTED_FLASH) is taken from the
flash-attn README: CUDA Ampere, Ada or Hopper (compute capability 8.x, 9.x), fp16/bf16, head
dimensions up to 256; ROCm MI200/MI300 (gfx90a, gfx94x), fp16/bf16, backward head dimensions
up to 128.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from seqvit.errors import SeqvitError
from seqvit.model import attention as kernels
from seqvit.model.attention import DeviceInfo, attention, check_backend, flash_unsupported, resolve_backend

HOPPER = DeviceInfo("cuda", capability=(9, 0), name="declared H200")


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """flash-attn 2's flash_attn_func, as documented, in fp32 arithmetic (see the module docstring)."""
    CALLS.append(
        {
            "shapes": (tuple(q.shape), tuple(k.shape), tuple(v.shape)),
            "dtype": q.dtype,
            "dropout_p": dropout_p,
            "softmax_scale": softmax_scale,
            "return_attn_probs": return_attn_probs,
        }
    )
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    batch, seqlen_q, nheads, headdim = q.shape
    if k.shape[0] != batch or k.shape[3] != headdim or k.shape != v.shape or nheads % k.shape[2]:
        raise RuntimeError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: not [batch, seqlen, nheads, headdim]"
        )
    if headdim > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if causal or tuple(window_size) != (-1, -1) or softcap or alibi_slopes is not None:
        raise NotImplementedError("the stand-in covers what seqvit calls: no causal mask, window, softcap or ALiBi")
    if softmax_scale is None:
        softmax_scale = headdim**-0.5
    group = nheads // k.shape[2]  # grouped-query attention: query heads share a key head
    keys = k.float().repeat_interleave(group, dim=2)
    values = v.float().repeat_interleave(group, dim=2)
    scores = torch.einsum("bshd,bthd->bhst", q.float(), keys) * softmax_scale
    lse = torch.logsumexp(scores, dim=-1).detach()  # [batch, nheads, seqlen], fp32; no gradient
    probs = torch.softmax(scores, dim=-1)
    s_dmask = torch.empty(0, dtype=q.dtype)
    if dropout_p > 0.0:
        keep = torch.rand_like(probs) >= dropout_p
        if return_attn_probs:  # flash-attn marks dropped entries negative
            s_dmask = torch.where(keep, probs, -probs).detach().to(q.dtype)
        probs = probs * keep / (1.0 - dropout_p)
    out = torch.einsum("bhst,bthd->bshd", probs, values).to(q.dtype)
    return (out, lse, s_dmask) if return_attn_probs else out


CALLS: list[dict] = []


@pytest.fixture
def flash_stand_in(monkeypatch):
    """flash_attn importable (the stand-in), and this CPU declared a Hopper GPU; both undone after the test."""
    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(kernels, "describe_device", lambda device: HOPPER)
    CALLS.clear()
    return CALLS


@pytest.fixture
def flash_not_installed(monkeypatch):
    """`import flash_attn` fails, whatever is installed; the module's memory of failed imports is restored after."""
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # None in sys.modules makes the import raise
    monkeypatch.setattr(kernels, "_flash_import_error", None)


def qkv(dtype, batch=2, seq_q=37, seq_k=37, heads=3, head_dim=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((batch, seq_q, heads, head_dim), (batch, seq_k, heads, head_dim), (batch, seq_k, heads, head_dim))
    return [torch.randn(shape, generator=gen).to(dtype).requires_grad_() for shape in shapes]


def sdpa_fp32(q, k, v):
    """torch's SDPA on fp32 copies of the inputs, in its own [batch, heads, seq, head_dim] layout."""
    q32, k32, v32 = (t.detach().float().transpose(1, 2).requires_grad_() for t in (q, k, v))
    return F.scaled_dot_product_attention(q32, k32, v32).transpose(1, 2), (q32, k32, v32)


def assert_within_rounding(actual, reference, dtype):
    """One unit in the last place of `dtype` (the single rounding of an fp32 result), plus 1e-5 of the
    largest magnitude for fp32 summation order (two kernels add the same terms in another order)."""
    actual, reference = actual.detach(), reference.detach().float()
    bound = torch.finfo(dtype).eps * reference.abs() + 1e-5 * reference.abs().max()
    excess = (actual.float() - reference).abs() - bound
    assert float(excess.max()) <= 0.0, f"worst excess over the bound {float(excess.max()):.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim, seq_q", [(64, 37), (40, 37), (128, 9)])  # 40: not a multiple of 8; 9 < 37: LSS
def test_flash_call_path_matches_sdpa_with_gradients(flash_stand_in, dtype, head_dim, seq_q):
    q, k, v = qkv(dtype, seq_q=seq_q, head_dim=head_dim)
    out = attention(q, k, v, "flash")
    assert out.shape == q.shape and out.dtype == dtype
    reference, leaves = sdpa_fp32(q, k, v)
    assert_within_rounding(out, reference, dtype)

    # a weight exactly representable in dtype, so the output gradient reaches both paths unrounded
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype).float()
    (out.float() * weight).sum().backward()
    (reference * weight).sum().backward()
    for ours, theirs in zip((q, k, v), leaves):
        assert ours.grad is not None and ours.grad.dtype == dtype
        assert_within_rounding(ours.grad, theirs.grad.transpose(1, 2), dtype)

    (call,) = flash_stand_in
    assert call["shapes"] == (tuple(q.shape), tuple(k.shape), tuple(v.shape))  # [B, S, H, d] as is
    assert call["softmax_scale"] == pytest.approx(1 / math.sqrt(head_dim), rel=1e-15)
    assert call["dropout_p"] == 0.0 and call["return_attn_probs"] is False


def test_flash_returns_the_log_sum_exp(flash_stand_in):
    q, k, v = qkv(torch.bfloat16, seq_q=11, seq_k=29)
    out, lse = attention(q, k, v, "flash", return_lse=True)
    assert torch.equal(out, attention(q, k, v, "flash"))
    assert lse.shape == (2, 3, 11) and lse.dtype == torch.float32 and not lse.requires_grad
    scores = torch.einsum("bshd,bthd->bhst", q.detach().float(), k.detach().float()) / math.sqrt(64)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), rtol=1e-6, atol=1e-6)
    assert [c["return_attn_probs"] for c in flash_stand_in] == [True, False]


def test_math_returns_the_same_log_sum_exp_and_sdpa_refuses():
    q, k, v = qkv(torch.float32, seq_q=11, seq_k=29)
    out, lse = attention(q, k, v, "math", return_lse=True)
    scores = torch.einsum("bshd,bthd->bhst", q.detach(), k.detach()) / math.sqrt(64)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, sdpa_fp32(q, k, v)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(SeqvitError, match="sdpa returns no log-sum-exp; use flash, math or auto"):
        attention(q, k, v, "sdpa", return_lse=True)
    assert torch.equal(attention(q, k, v, "auto", return_lse=True)[1], lse)  # auto: math where flash cannot run


def test_dropout_reaches_flash_attn(flash_stand_in):
    q, k, v = qkv(torch.bfloat16)
    torch.manual_seed(0)
    dropped = attention(q, k, v, "flash", dropout_p=0.25)
    assert flash_stand_in[-1]["dropout_p"] == 0.25
    assert not torch.equal(dropped, attention(q, k, v, "flash"))


def test_auto_takes_flash_for_half_precision_and_sdpa_for_fp32(flash_stand_in):
    q, k, v = qkv(torch.bfloat16)
    assert torch.equal(attention(q, k, v, "auto"), attention(q, k, v, "flash"))
    assert len(flash_stand_in) == 2
    q, k, v = qkv(torch.float32)
    assert resolve_backend("auto", q) == "sdpa"
    assert torch.equal(attention(q, k, v, "auto"), attention(q, k, v, "sdpa"))
    assert len(flash_stand_in) == 2  # fp32 never reached flash-attn
    with pytest.raises(SeqvitError, match=r"flash cannot run here: flash-attn takes fp16/bf16 tensors.*sdpa or auto"):
        attention(q, k, v, "flash")


def test_the_model_calls_flash_attn_once_per_block(flash_stand_in):
    from seqvit.model.vit import ForecastViT

    model = ForecastViT(2, 2, (4, 8), embed_dim=32, depth=3, num_heads=2, attention_backend="auto").to(torch.bfloat16)
    out = model(torch.randn(1, 2, 8, 4, dtype=torch.bfloat16), torch.tensor([6.0]))
    out.float().sum().backward()
    assert [c["shapes"][0] for c in flash_stand_in] == [(1, 8, 2, 16)] * 3


def test_the_gate_refuses_the_cpu_itself(monkeypatch):
    """With flash-attn importable but no declared GPU, the production gate keeps flash off the CPU."""
    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    q, k, v = qkv(torch.bfloat16)
    assert resolve_backend("auto", q) == "sdpa"
    with pytest.raises(SeqvitError, match="flash-attn needs a CUDA or ROCm GPU, not cpu"):
        attention(q, k, v, "flash")
    if not torch.cuda.is_available():
        with pytest.raises(SeqvitError, match=r"config key model.attention: flash needs flash-attn and a CUDA or ROCm"):
            check_backend("flash")


def test_check_backend_names_the_reason(flash_stand_in, monkeypatch):
    check_backend("flash")  # installed, declared Hopper
    monkeypatch.setattr(kernels, "describe_device", lambda device: DeviceInfo("cuda", capability=(7, 5), name="T4"))
    with pytest.raises(
        SeqvitError, match=r"Ampere, Ada or Hopper GPUs \(compute capability 8.x, 9.x\), not cuda sm_75"
    ):
        check_backend("flash")


def test_not_installed_is_named(flash_not_installed, monkeypatch):
    monkeypatch.setattr(kernels, "describe_device", lambda device: HOPPER)
    q, k, v = qkv(torch.bfloat16)
    assert resolve_backend("auto", q) == "sdpa"
    with pytest.raises(SeqvitError, match=r"flash-attn is not installed \(pip install 'seqvit\[flash\]'\)"):
        attention(q, k, v, "flash")


DEVICES = {
    "cpu": DeviceInfo("cpu"),
    "T4": DeviceInfo("cuda", capability=(7, 5)),
    "A100": DeviceInfo("cuda", capability=(8, 0)),
    "RTX 3090": DeviceInfo("cuda", capability=(8, 6)),
    "L40S": DeviceInfo("cuda", capability=(8, 9)),
    "H200": DeviceInfo("cuda", capability=(9, 0)),
    "B200": DeviceInfo("cuda", capability=(10, 0)),
    "MI250X": DeviceInfo("rocm", arch="gfx90a"),
    "MI300X": DeviceInfo("rocm", arch="gfx942"),
    "RX 7900": DeviceInfo("rocm", arch="gfx1100"),
}
# the flash-attn README's support statement for FlashAttention-2, device by device:
# (dtypes, largest head dimension it trains), or None where it does not run
EXPECTED_FLASH = {
    "cpu": None,
    "T4": None,  # Turing: FlashAttention 1.x only
    "A100": ("fp16 bf16", 256),
    "RTX 3090": ("fp16 bf16", 256),
    "L40S": ("fp16 bf16", 256),
    "H200": ("fp16 bf16", 256),
    "B200": None,  # not among Ampere, Ada, Hopper
    "MI250X": ("fp16 bf16", 128),  # backward head dimensions up to 128 on ROCm
    "MI300X": ("fp16 bf16", 128),
    "RX 7900": None,  # not MI200 or MI300
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("installed", [True, False])
def test_auto_selection_over_devices_dtypes_and_head_sizes(installed, request, monkeypatch):
    request.getfixturevalue("flash_stand_in" if installed else "flash_not_installed")
    for device_name, device in DEVICES.items():
        monkeypatch.setattr(kernels, "describe_device", lambda _, device=device: device)
        for dtype_name, dtype in DTYPES.items():
            for head_dim in (32, 64, 100, 128, 192, 256, 320):
                support = EXPECTED_FLASH[device_name]
                expected = installed and support is not None and dtype_name in support[0] and head_dim <= support[1]
                q = torch.empty(1, 1, 1, head_dim, dtype=dtype)
                case = (device_name, dtype_name, head_dim, installed)
                assert resolve_backend("auto", q) == ("flash" if expected else "sdpa"), case
                assert (flash_unsupported(device, dtype, head_dim, installed) is None) == expected, case
