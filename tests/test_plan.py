"""seqvit plan: expected values from hand arithmetic written out here, and from the real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqvit.cli import main
from seqvit.config import load_configs
from seqvit.errors import SeqvitError
from seqvit.plan import load_machine, parameter_count, plan_run, run_shape

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "config" / "frontier-seqscale.yaml"
DEMO = ROOT / "config" / "config.yaml"


def _plan_cli(*args) -> int:
    """Exit status of `seqvit plan ARGS` (a run that does not fit exits through SystemExit(1))."""
    try:
        return main(["plan", *args])
    except SystemExit as exc:
        return exc.code


def _cfg(path, *overrides):
    return load_configs([path], list(overrides))


def test_issue_figure_lss_patch1_gathers_68_gb_and_does_not_fit(capsys, tmp_path):
    # the sweep as it was first written: the p=1 run without micro-batching
    overlay = tmp_path / "no-accumulation.yaml"
    overlay.write_text("parallel:\n  runs:\n    1: {sp: 64, dp: 1, grad_accumulation: 1}\n")
    cfg = load_configs([FRONTIER, overlay])
    assert not plan_run(run_shape(cfg, 1), load_machine("frontier")).fits
    shape = run_shape(cfg, 1)
    # 720 x 1440 cells at patch 1, sp=64 x dp=1, batch 16 on one replica, no accumulation
    assert (shape.tokens, shape.sp, shape.dp, shape.micro_batch) == (1_036_800, 64, 1, 16)
    plan = plan_run(shape, load_machine("frontier"))
    gathered_kv = 2 * 16 * 1_036_800 * 1024 * 2  # K and V, batch 16, whole sequence, embed 1024, bf16
    assert gathered_kv == pytest.approx(67.95e9, rel=1e-3)
    # the layout copy of the gathered K/V (and of dK/dV in the backward pass)
    assert plan.memory["sequence-parallel buffers"] == gathered_kv
    # dQ (local) + dK, dV (whole sequence) of the kernel's backward
    assert plan.memory["attention working set"] == 16 * 2 * (16_200 * 1024) + gathered_kv
    assert plan.capacity == 64e9 and not plan.fits and plan.peak > 3 * gathered_kv

    code = _plan_cli("--config", str(FRONTIER), "--config", str(overlay), "--machine", "frontier", "--patch-size", "1")
    err = capsys.readouterr().err
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "run p=1" in line and "does not fit" in line and "capacity 64.0 GB" in line
    assert f"peak {plan.peak / 1e9:.1f} GB" in line
    # checkpointing is already on, so the cheapest change is more accumulation (smaller micro-batches)
    assert "cheapest fix: --set train.grad_accumulation=" in line


def test_every_run_of_the_corrected_frontier_sweep_fits():
    cfg = _cfg(FRONTIER)
    machine = load_machine("frontier")
    assert cfg["parallel"]["runs"][1]["grad_accumulation"] == 16  # micro-batch 1 on the p=1 run
    assert run_shape(cfg, 1).micro_batch == 1
    for p in (24, 16, 8, 4, 2, 1):
        plan = plan_run(run_shape(cfg, p), machine)
        assert plan.fits, (p, plan.peak)


@pytest.mark.parametrize("path, patch", [(DEMO, 8), (DEMO, 2), (FRONTIER, 24)])
def test_parameter_count_matches_the_real_model(path, patch):
    from seqvit.data.grids import named_grid
    from seqvit.model.vit import build_model

    cfg = _cfg(path, "model.depth=2")  # depth 2 keeps the 1024-wide model cheap to build
    shape = run_shape(cfg, patch)
    model = build_model(cfg["model"], shape.channels, patch, named_grid(cfg["grid"]).shape)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())


def test_weights_gradients_optimizer_and_zero_by_hand():
    cfg = _cfg(FRONTIER)
    machine = load_machine("frontier")
    shape = run_shape(cfg, 1)
    phi = parameter_count(shape)
    memory = plan_run(shape, machine).memory  # bf16, ZeRO-1 over 64 ranks
    assert memory["weights"] == 2 * phi and memory["gradients"] == 2 * phi
    assert memory["optimizer"] == pytest.approx(12 * phi / 64)  # fp32 master, m, v partitioned over 64
    from dataclasses import replace

    zero2 = plan_run(replace(shape, zero_stage=2), machine).memory
    assert zero2["gradients"] == pytest.approx(2 * phi / 64)
    fp32 = plan_run(replace(shape, precision="fp32", zero_stage=0), machine).memory
    assert fp32["weights"] == 4 * phi and fp32["optimizer"] == 8 * phi  # AdamW m and v only
    # the position table holds all 1,036,800 x 1024 positions on every rank, in bf16
    assert memory["position table"] == 1_036_800 * 1024 * 2


def test_activation_checkpointing_keeps_block_inputs_by_hand():
    from dataclasses import replace

    cfg = _cfg(DEMO)  # fp32, embed 128, depth 4, mlp 4, batch 16, one process, 5.625 deg grid 32 x 64
    shape = run_shape(cfg, 2)
    assert (shape.tokens, shape.micro_batch, shape.precision) == (512, 16, "fp32")
    machine = load_machine("cpu-local")
    b, n, e, f, h, a = 16, 512, 128, 512, 4, 4
    # per block: 7 n E + K, V (2 n E) + 2 n F elements, plus the fp32 softmax statistics
    block = b * a * (7 * n * e + 2 * n * e + 2 * n * f) + 4 * b * n * h
    off = plan_run(shape, machine).memory
    on = plan_run(replace(shape, activation_checkpointing=True), machine).memory
    embed_head = off["activations (saved)"] - 4 * block
    assert on["activations (saved)"] == pytest.approx(4 * b * n * e * a + embed_head)
    assert on["block recompute"] == block and off["block recompute"] == 0
    # the math kernel adds the N x N scores: fp32 softmax and its copy, per head
    math = plan_run(replace(shape, attention="math"), machine).memory
    assert math["attention working set"] - off["attention working set"] == b * h * n * n * (4 + a)


def test_flops_and_step_time_by_hand():
    cfg = _cfg(DEMO)
    shape = run_shape(cfg, 8)  # 32 tokens of 8 x 8 pixels, 1 + 4 x 2 = 9 channels
    plan = plan_run(shape, load_machine("cpu-local"))
    c, t, pp, d, depth = shape.channels, 32, 64, 128, 4
    assert c == 9
    forward = (
        2 * c * t * pp * d  # patch embedding
        + 4 * t * 4 * c * d
        + 4 * t * d * d  # aggregation
        + 2 * d  # lead time
        + depth * (2 * t * d * (4 * d + 2 * 512) + 4 * t * t * d)  # blocks
        + 2 * t * d * c * pp  # head
    )
    per_sample = 3 * forward - 2 * c * t * pp * d - 2 * d
    assert plan.flops["model_per_sample"] == pytest.approx(per_sample)
    assert plan.flops["model_per_rank"] == pytest.approx(16 * per_sample)  # one rank runs the whole batch
    # cpu-local: 0.1 TFLOP/s peak at 50% efficiency, nothing to communicate on one rank
    assert plan.compute_seconds == pytest.approx(16 * per_sample / (0.1e12 * 0.5))
    assert plan.step_seconds == plan.compute_seconds
    assert plan.mfu == pytest.approx(0.5)


def test_collectives_by_hand():
    m = load_machine("frontier")
    # two GCDs of one MI250X, 200 GB/s, 5 us: a ring all-gather of 1 GB segments takes one step
    assert m.collective_seconds("all_gather", 2, 1e9) == pytest.approx(1e9 / 200e9 + 5e-6)
    # 8 ranks in a node at 50 GB/s: an all-to-all of a 1 GB buffer sends 7/8 GB
    assert m.collective_seconds("all_to_all", 8, 1e9) == pytest.approx(7 / 8 * 1e9 / 50e9 + 8e-6)
    # 16 ranks on 2 nodes: each rank receives 15 x 1 GB over 50 GB/s links in its node (0.3 s), while
    # 8 x 1 GB enter each node through its 100 GB/s of NICs (0.08 s); the slower bounds the ring
    assert m.collective_seconds("all_gather", 16, 1e9) == pytest.approx(15e9 / 50e9 + 15 * 15e-6)
    assert m.collective_seconds("all_reduce", 1, 1e9) == 0


def test_unknown_machine_and_bad_layout_name_the_key():
    with pytest.raises(SeqvitError, match="unknown machine 'nope'.*frontier"):
        load_machine("nope")
    cfg = _cfg(FRONTIER, "parallel.sp_method=ulysses")
    with pytest.raises(SeqvitError, match="parallel.sp_method ulysses needs sp \\(64\\) to divide model.num_heads"):
        run_shape(cfg, 1)
    with pytest.raises(SeqvitError, match="train.grad_accumulation 3"):
        run_shape(_cfg(DEMO, "train.grad_accumulation=3"), 8)


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_plan_runs_on_every_shipped_config(path, capsys):
    for machine in ("cpu-local", "frontier", "h200"):
        code = _plan_cli("--config", str(path), "--machine", machine)
        out = capsys.readouterr().out
        assert code in (0, 1) and "summary" in out
