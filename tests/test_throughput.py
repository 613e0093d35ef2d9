"""Model FLOPs against torch's FLOP counter, throughput and MFU arithmetic, the peak lookup."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seqvit.errors import SeqvitError
from seqvit.model.vit import build_model
from seqvit.train import throughput
from seqvit.train.throughput import (
    Throughput,
    _measure_cpu,
    forward_flops_by_part,
    measured_cpu_peak_tflops,
    model_flops_per_sample,
    peak_tflops,
)

WINDOW = {"attention_pattern": "window"}

# (model config, channels, patch size, grid, batch). attention=math: the counter has no formula
# for CPU's fused SDPA kernel and would see no attention at all; the explicit einsums it counts.
CONFIGS = [
    ({"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 4}, 3, 2, (8, 16), 2),
    ({"embed_dim": 64, "depth": 3, "num_heads": 8, "mlp_ratio": 2.5}, 5, 4, (16, 32), 3),
    ({"embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4}, 9, 8, (32, 64), 2),  # the demo at p = 8
    ({"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4}, 2, 2, (32, 64), 1),  # 512 tokens: attention-heavy
    # window attention: 8 x 16 tokens in windows of 4 (a shifted block's pole windows are 2 x 4), and
    # 4 x 8 tokens in windows of 2
    ({**WINDOW, "embed_dim": 32, "depth": 3, "num_heads": 4, "mlp_ratio": 4, "window_size": 4}, 3, 2, (16, 32), 2),
    ({**WINDOW, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2, "window_size": 2}, 2, 2, (8, 16), 2),
]

# Counted by the FLOP counter but not per sample: the aggregation's query-key product on weights,
# 2 D^2 forward and 4 D^2 backward per call, whatever the batch.
TOLERANCE = 1e-3


def _counted(model, batch, training):
    tokens = torch.randn(batch, model.channels, model.num_tokens, model.patch_size**2)
    lead = torch.full((batch,), 6.0)
    with FlopCounterMode(display=False) as counter:
        out = model(tokens, lead)
        if training:
            out.square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("training", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("cfg, channels, patch, grid, batch", CONFIGS)
def test_model_flops_match_torch_flop_counter(cfg, channels, patch, grid, batch, training):
    torch.manual_seed(0)
    model = build_model({**cfg, "attention": "math"}, channels, patch, grid)
    counted = _counted(model, batch, training)
    ours = batch * model_flops_per_sample(
        cfg, channels, patch, model.num_tokens, training=training, token_grid=model.token_grid
    )
    dim = cfg["embed_dim"]
    per_call = (6 if training else 2) * dim * dim
    assert counted == ours + per_call  # exact once the per-call term is added
    assert abs(counted - ours) / counted < TOLERANCE


def test_flops_by_part_and_the_training_factor():
    cfg = {"embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4}
    parts = forward_flops_by_part(cfg, 9, 8, 32)
    assert parts["patch_embedding"] == parts["head"] == 2 * 9 * 32 * 64 * 128
    assert parts["block_linear"] == 4 * 32 * (2 * 128 * 384 + 2 * 128 * 128 + 2 * 2 * 128 * 512)
    assert parts["attention"] == 4 * 4 * 32 * 32 * 128
    forward = model_flops_per_sample(cfg, 9, 8, 32, training=False)
    assert forward == sum(parts.values())
    # the data inputs of the two embeddings need no gradient
    assert model_flops_per_sample(cfg, 9, 8, 32) == 3 * forward - parts["patch_embedding"] - parts["lead_embedding"]
    # ForecastViT's defaults fill missing keys (embed 128, depth 4, heads 4, mlp 4)
    assert model_flops_per_sample({}, 9, 8, 32) == model_flops_per_sample(cfg, 9, 8, 32)
    with pytest.raises(SeqvitError, match=r"model.embed_dim \(130\) must be divisible by model.num_heads \(4\)"):
        model_flops_per_sample({"embed_dim": 130}, 9, 8, 32)


def test_window_attention_flops():
    cfg = {"embed_dim": 32, "depth": 3, "num_heads": 4, "mlp_ratio": 4}
    window = {**cfg, **WINDOW, "window_size": 4}
    full_parts = forward_flops_by_part(cfg, 3, 2, 128)
    parts = forward_flops_by_part(window, 3, 2, 128, token_grid=(8, 16))
    # 8 x 16 tokens, windows of 4: blocks 0 and 2 have 8 windows of 16 tokens; block 1, shifted, has 4
    # windows of 2 x 4 tokens at each pole and 4 of 4 x 4 between (counted by hand)
    pairs = 2 * (8 * 16**2) + (8 * 8**2 + 4 * 16**2)
    assert parts["attention"] == 4 * 32 * pairs
    assert full_parts["attention"] == 4 * 32 * 3 * 128**2
    assert {k: v for k, v in parts.items() if k != "attention"} == {
        k: v for k, v in full_parts.items() if k != "attention"
    }
    with pytest.raises(SeqvitError, match="need the token grid"):
        forward_flops_by_part(window, 3, 2, 128)
    with pytest.raises(SeqvitError, match=r"model.window_size: 3 does not divide the token grid of 8 x 16"):
        forward_flops_by_part({**window, "window_size": 3}, 3, 2, 128, token_grid=(8, 16))


def test_throughput_and_mfu_arithmetic():
    rates = Throughput(
        samples=1200, seconds=60, world_size=8, flops_per_sample=5e12, peak_tflops_per_device=191.5, num_tokens=4096
    )
    assert rates.samples_per_s == 20
    assert rates.tokens_per_s == 20 * 4096
    assert rates.tflops == pytest.approx(100.0)  # 20 samples/s x 5 TFLOP
    assert rates.tflops_per_device == pytest.approx(12.5)
    assert rates.mfu == pytest.approx(12.5 / 191.5)
    assert rates.as_dict()["mfu"] == rates.mfu
    assert Throughput.of(1200, 60, 8, 4096, 5e12, 191.5) == rates  # the training loop's argument order
    with pytest.raises(SeqvitError, match="seconds must be positive"):
        Throughput(1, 0, 1, 1.0, 1.0, 1)
    with pytest.raises(SeqvitError, match="world_size"):
        Throughput(1, 1, 0, 1.0, 1.0, 1)
    with pytest.raises(SeqvitError, match="peak"):
        Throughput(1, 1, 1, 1.0, 0.0, 1)


# Data sheets: AMD Instinct MI250X, 383 TFLOP/s bf16/fp16 and 95.7 fp32 matrix per package of two
# GCDs (a GCD is one device); NVIDIA H100 and H200 SXM, 989 TFLOP/s bf16 dense and 67 fp32.
@pytest.mark.parametrize(
    "name, dtype, expected, machine",
    [
        ("AMD Instinct MI250X", "bf16", 383 / 2, "frontier.yaml"),
        ("AMD Instinct MI250X/MI250", "fp32", 95.7 / 2, "frontier.yaml"),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0, "h100.yaml"),
        ("NVIDIA H100 80GB HBM3", torch.float32, 67.0, "h100.yaml"),
        ("NVIDIA H200", "bfloat16", 989.0, "h200.yaml"),
    ],
)
def test_gpu_peak_from_the_machine_files(monkeypatch, name, dtype, expected, machine):
    monkeypatch.setattr(throughput, "_device_name", lambda device: name)
    value, source = peak_tflops({}, torch.device("cuda", 0), dtype)
    assert value == pytest.approx(expected, abs=0.05) and name in source and machine in source


@pytest.mark.parametrize("name", ["NVIDIA H100 PCIe", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB"])
def test_unknown_gpu_needs_the_config_key(monkeypatch, name):
    monkeypatch.setattr(throughput, "_device_name", lambda device: name)
    with pytest.raises(SeqvitError, match=rf"{name}.*set config key train.peak_tflops"):
        peak_tflops({}, torch.device("cuda", 0), "bf16")
    assert peak_tflops({"peak_tflops": 312}, torch.device("cuda", 0), "bf16") == (312.0, "config key train.peak_tflops")


def test_peak_lookup_order(monkeypatch):
    monkeypatch.setattr(throughput, "_device_name", lambda device: "AMD Instinct MI250X")
    calls = []
    monkeypatch.setattr(throughput, "_measure_cpu", lambda *args: calls.append(args) or (0.25, 1024))
    # the config key wins everywhere
    assert peak_tflops({"peak_tflops": 150.0}, torch.device("cuda", 0), "bf16")[0] == 150.0
    assert peak_tflops({"peak_tflops": 2}, "cpu", "fp32")[0] == 2.0
    assert calls == []
    # then the table on a GPU, the measurement on CPU (with the training thread count)
    assert peak_tflops({}, "cuda", "bf16")[0] == 191.5
    value, source = peak_tflops({"threads": 3}, "cpu", "fp32")
    assert value == 0.25 and "measured" in source and "3 CPU threads" in source and calls == [(3, "fp32", 0.5)]
    for bad in (-1, 0, "fast", True):
        with pytest.raises(SeqvitError, match="train.peak_tflops"):
            peak_tflops({"peak_tflops": bad}, "cpu", "fp32")
    with pytest.raises(SeqvitError, match="unknown dtype"):
        peak_tflops({}, "cpu", "int8")


def test_cpu_peak_is_measured_once_per_process():
    _measure_cpu.cache_clear()  # training in an earlier test may have measured it
    first = measured_cpu_peak_tflops(1, "fp32")
    assert math.isfinite(first) and first > 0
    assert measured_cpu_peak_tflops(1, "fp32") == first  # cached: the same value, not a second measurement
    assert _measure_cpu.cache_info().hits == 1 and _measure_cpu.cache_info().misses == 1
    bf16 = measured_cpu_peak_tflops(1, torch.bfloat16, seconds=0.2)
    assert math.isfinite(bf16) and bf16 > 0
