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
# the sweep with LSS over all sp ranks, the method the figures below were worked out for
LSS = ("parallel.sp_method=lss", "parallel.sp_inner=1")


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
    overlay.write_text(
        "parallel:\n  sp_method: lss\n  sp_inner: 1\n  runs:\n    1: {sp: 64, dp: 1, grad_accumulation: 1}\n"
    )
    cfg = load_configs([FRONTIER, overlay])
    assert not plan_run(run_shape(cfg, 1), load_machine("frontier")).fits
    shape = run_shape(cfg, 1)
    # 720 x 1440 cells at patch 1, sp=64 x dp=1, batch 16 on one replica, no accumulation
    assert (shape.tokens, shape.sp, shape.dp, shape.micro_batch) == (1_036_800, 64, 1, 16)
    plan = plan_run(shape, load_machine("frontier"))
    b, n, e, f, h, a = 16, 16_200, 1024, 4096, 16, 2
    gathered_kv = 2 * b * 1_036_800 * e * a  # K and V, batch 16, whole sequence, embed 1024, bf16
    assert gathered_kv == pytest.approx(67.95e9, rel=1e-3)
    # checkpointing: the recomputed block holds its activations and the gathered K/V (its input is saved)
    assert plan.memory["block recompute"] == pytest.approx(b * n * a * (7 * e + 2 * f) + gathered_kv + 4 * b * n * h)
    # the backward pass meets the gathered K/V one chunk of heads at a time: 16 chunks of 1 head at sp=64
    assert shape.head_chunks == 16
    chunk = gathered_kv / 16  # dK and dV of one chunk (bf16), and the reduce-scatter's buffer in fp32
    attention_backward = b * n * a * (e - 2 * f) + chunk + 2 * chunk
    mlp_backward = b * n * a * (f + e)
    assert plan.memory["backward working set"] == pytest.approx(max(attention_backward, mlp_backward))
    assert plan.capacity == 64e9 and not plan.fits and plan.peak > gathered_kv

    code = _plan_cli("--config", str(FRONTIER), "--config", str(overlay), "--machine", "frontier", "--patch-size", "1")
    err = capsys.readouterr().err
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "run p=1" in line and "does not fit" in line and "capacity 64.0 GB" in line
    assert f"peak {plan.peak / 1e9:.1f} GB" in line
    # checkpointing is already on, so the cheapest change is more accumulation (smaller micro-batches)
    assert "cheapest fix: --set train.grad_accumulation=" in line


def test_every_run_of_the_corrected_frontier_sweep_fits():
    cfg = _cfg(FRONTIER, *LSS)
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
    cfg = _cfg(FRONTIER, *LSS)
    machine = load_machine("frontier")
    shape = run_shape(cfg, 1)
    phi = parameter_count(shape)
    memory = plan_run(shape, machine).memory  # bf16, ZeRO-1 over 64 ranks
    # bf16 weights and gradients, and DeepSpeed's fp32 gradient accumulation
    assert memory["weights"] == 2 * phi and memory["gradients"] == 2 * phi + 4 * phi
    assert memory["optimizer"] == pytest.approx(12 * phi / 64)  # fp32 master, m, v partitioned over 64
    assert memory["ZeRO reduce bucket"] == 500_000_000 * 2  # DeepSpeed's default bucket, bf16, on a GPU
    from dataclasses import replace

    zero2 = plan_run(replace(shape, zero_stage=2), machine).memory
    assert zero2["gradients"] == pytest.approx(6 * phi / 64)
    fp32 = plan_run(replace(shape, precision="fp32", zero_stage=0), machine).memory
    assert fp32["weights"] == 4 * phi and fp32["optimizer"] == 8 * phi  # AdamW m and v only
    assert fp32["ZeRO reduce bucket"] == 0
    fp32_zero1 = plan_run(replace(shape, precision="fp32", zero_stage=1), machine).memory
    assert fp32_zero1["optimizer"] == pytest.approx(12 * phi / 64)  # ZeRO keeps an fp32 master copy too
    # the position table's halves: 720 rows and 1440 columns of 512 values each, in bf16 (not 1,036,800 x 1024)
    assert memory["position tables"] == (720 + 1440) * 512 * 2


def test_activation_checkpointing_keeps_block_inputs_by_hand():
    from dataclasses import replace

    cfg = _cfg(DEMO)  # fp32, embed 128, depth 4, mlp 4, batch 16, one process, 5.625 deg grid 32 x 64
    shape = run_shape(cfg, 2)
    assert (shape.tokens, shape.micro_batch, shape.precision) == (512, 16, "fp32")
    machine = load_machine("cpu-local")
    b, n, e, f, h, a, c, pp = 16, 512, 128, 512, 4, 4, shape.channels, 4
    # per block: block input, norm1 output, q k v, kernel output, norm2 input and output (8 n E) and the
    # GELU's input and output (2 n F), plus the fp32 softmax statistics
    block = b * a * (8 * n * e + 2 * n * f) + 4 * b * n * h
    # the embedding: tokens' layout copy, the channel embeddings twice, the H-head mixture, softmax
    # weights, the output projection's input
    embedding = b * n * a * (c * pp + 2 * c * e + h * e + h * c + e)
    off = plan_run(shape, machine).memory
    on = plan_run(replace(shape, activation_checkpointing=True), machine).memory
    assert off["activations (saved)"] == pytest.approx(embedding + 4 * block)
    assert on["activations (saved)"] == pytest.approx(embedding + 4 * b * n * e * a)
    assert on["block recompute"] == block - b * n * e * a and off["block recompute"] == 0
    # the last block's MLP backward: the GELU's gradient and the residual gradient
    assert off["backward working set"] == b * n * a * (f + e)
    # the math kernel adds the N x N scores, fp32 softmax and its copy, per head, to every block
    math = plan_run(replace(shape, attention="math"), machine).memory
    assert math["activations (saved)"] - off["activations (saved)"] == 4 * b * h * n * n * (4 + a)


MACHINE = """name: test
device_memory_gb: 8
runtime_overhead_gb: 0.1
peak_tflops: {fp32: 0.1, bf16: 0.2}
attention_tflops: {fp32: 0.05}
elementwise_gbs: {fp32: 10}
efficiency: 1.0
framework_overhead_ms: {step: 5, block: 2, zero3_block: 3}
cores_per_node: 2
devices_per_node: 8
levels:
  - name: local
    ranks: 8
    bandwidth_gbs: 5
    latency_us: 50
    collectives: {all_to_all: {bandwidth_gbs: 1, latency_us: 100}}
network: {node_bandwidth_gbs: 1, latency_us: 100}
"""


def test_flops_and_step_time_by_hand(tmp_path):
    from dataclasses import replace

    cfg = _cfg(DEMO)
    shape = replace(run_shape(cfg, 8), threads=1)  # 32 tokens of 8 x 8 pixels, 1 + 4 x 2 = 9 channels
    (tmp_path / "test.yaml").write_text(MACHINE)
    machine = load_machine(str(tmp_path / "test.yaml"))
    plan = plan_run(shape, machine)
    c, t, pp, d, depth = shape.channels, 32, 64, 128, 4
    assert c == 9
    attention = depth * 4 * t * t * d
    forward = (
        2 * c * t * pp * d  # patch embedding
        + 4 * t * 4 * c * d
        + 4 * t * d * d  # aggregation
        + 2 * d  # lead time
        + depth * 2 * t * d * (4 * d + 2 * 512)  # blocks' matmuls
        + attention
        + 2 * t * d * c * pp  # head
    )
    per_sample = 3 * forward - 2 * c * t * pp * d - 2 * d
    assert plan.flops["model_per_sample"] == pytest.approx(per_sample)
    assert plan.flops["model_per_rank"] == pytest.approx(16 * per_sample)  # one rank runs the whole batch
    # matmuls at 0.1 TFLOP/s, attention (3 x its forward) at 0.05, one rank on one of the 2 cores
    assert plan.compute["matmuls"] == pytest.approx(16 * (per_sample - 3 * attention) / 0.1e12)
    assert plan.compute["attention"] == pytest.approx(16 * 3 * attention / 0.05e12)
    assert plan.compute["framework"] == pytest.approx(5e-3 + depth * 2e-3)
    assert plan.compute_seconds == pytest.approx(sum(plan.compute.values()))
    assert plan.step_seconds == plan.compute_seconds  # nothing to communicate on one rank
    # two threads on the 2 cores: twice the one-core rates; shared by two ranks, one each
    two = plan_run(replace(shape, threads=2), machine)
    assert two.compute["matmuls"] == pytest.approx(plan.compute["matmuls"] / 2)
    two_ranks = plan_run(replace(shape, threads=2, sp=2), machine)
    assert two_ranks.compute["matmuls"] == pytest.approx(plan.compute["matmuls"] / 2)  # half the work each, one core
    # 4 ranks on the 2 cores: each computes at half the one-core rates; ZeRO-3 adds its per-block time
    four = plan_run(replace(shape, sp=4, zero_stage=3), machine)
    assert four.compute["matmuls"] == pytest.approx(2 * 16 * (per_sample - 3 * attention) / 4 / 0.1e12)
    assert four.compute["framework"] == pytest.approx(5e-3 + depth * (2e-3 + 3e-3))
    # elementwise traffic: 4 passes over the saved activations, the optimizer's state read and written
    from seqvit.plan.estimate import _block_saved, _embedding_saved

    traffic = 4 * (_embedding_saved(shape) + depth * _block_saved(shape))
    traffic += 2 * sum(plan.memory[k] for k in ("weights", "gradients", "optimizer"))
    assert plan.compute["elementwise"] == pytest.approx(traffic / 10e9)
    assert "elementwise" not in plan_run(replace(shape, precision="bf16"), machine).compute  # no bf16 figure
    # Ulysses at sp=4: the fused q, k, v and the output all-to-all forward and backward, per block, over the
    # level's measured all-to-all figures (1 GB/s, 100 us)
    b, n, a = 16, 8, 4
    qkv = 3 / 4 * 3 * b * n * d * a / 1e9 + 100e-6
    out = 3 / 4 * b * n * d * a / 1e9 + 100e-6
    assert four.comm["all-to-all"] == pytest.approx(depth * 2 * (qkv + out))


def test_lss_chunks_trade_memory_for_collectives():
    from dataclasses import replace

    shape = run_shape(_cfg(FRONTIER, *LSS), 1)  # sp=64, 16 heads: 16 chunks of one head
    machine = load_machine("frontier")
    chunked = plan_run(shape, machine)
    # a chunk gathers about 4 segments' worth: one chunk up to sp=4, then sp / 4 chunks, at most one per head
    assert (shape.head_chunks, replace(shape, sp=4).head_chunks, replace(shape, sp=8).head_chunks) == (16, 1, 2)
    # per chunk: one all-gather forward (twice under checkpointing), one fp32 reduce-scatter backward
    b, n, e, a, depth = shape.micro_batch, shape.local_tokens, 1024, 2, 8
    segment = 2 * b * n * e * a / 16
    gather = machine.collective_seconds("all_gather", 64, segment)
    scatter = machine.collective_seconds("reduce_scatter", 64, segment * 2)
    assert chunked.comm["all-gather"] == pytest.approx(depth * shape.grad_accumulation * 2 * 16 * gather)
    assert chunked.comm["reduce-scatter"] == pytest.approx(depth * shape.grad_accumulation * 16 * scatter)


def test_host_memory_counts_only_the_gradients_in_deepspeeds_bucket(tmp_path):
    from dataclasses import replace

    (tmp_path / "test.yaml").write_text(MACHINE + "memory_on_touch: true\n")
    host = load_machine(str(tmp_path / "test.yaml"))
    shape = replace(run_shape(_cfg(DEMO), 8), zero_stage=3)
    phi = parameter_count(shape)
    assert plan_run(shape, host).memory["ZeRO reduce bucket"] == 4 * phi  # fp32 gradients fill phi of it
    (tmp_path / "device.yaml").write_text(MACHINE)
    assert plan_run(shape, load_machine(str(tmp_path / "device.yaml"))).memory["ZeRO reduce bucket"] == 4 * 5e8


def test_frontier_patch1_before_and_after_the_memory_fixes():
    """The whole position table on every rank and all heads gathered at once, against this code."""
    from dataclasses import replace

    from seqvit.plan import estimate

    machine = load_machine("frontier")
    shape = replace(run_shape(_cfg(FRONTIER, *LSS), 1), grad_accumulation=4)  # micro-batch 4
    after = plan_run(shape, machine)
    chunks, sum_bytes = estimate.RunShape.head_chunks, estimate.SUM_BYTES
    estimate.RunShape.head_chunks, estimate.SUM_BYTES = property(lambda s: 1), 2  # type: ignore[method-assign]
    try:
        gathered_at_once = plan_run(shape, machine)
    finally:
        estimate.RunShape.head_chunks, estimate.SUM_BYTES = chunks, sum_bytes  # type: ignore[method-assign]
    table = 1_036_800 * 1024 * 2  # the whole table in bf16: 2.1 GB on every rank
    before = gathered_at_once.peak - gathered_at_once.memory["position tables"] + table
    b, n_all, e, a = 4, 1_036_800, 1024, 2
    # the working set held dK and dV of all heads and the reduce-scatter's copy: 2 x 17 GB; now a 16th, and
    # the copy in fp32
    assert gathered_at_once.memory["backward working set"] == pytest.approx(
        b * 16_200 * a * (e - 2 * 4096) + 2 * (2 * b * n_all * e * a)
    )
    assert before > 64e9 and after.fits and after.peak < 0.55 * before


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
    cfg = _cfg(FRONTIER, "parallel.sp_method=ulysses", "parallel.sp_inner=1")
    # training's own check (parallel/groups.py check_layout), named for the run
    with pytest.raises(SeqvitError, match="run p=1: .*parallel.sp \\(64\\): ulysses .* sp must divide the head count"):
        run_shape(cfg, 1)
    with pytest.raises(SeqvitError, match="train.grad_accumulation 3"):
        run_shape(_cfg(DEMO, "train.grad_accumulation=3"), 8)


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_plan_runs_on_every_shipped_config(path, capsys):
    for machine in ("cpu-local", "frontier", "h200"):
        code = _plan_cli("--config", str(path), "--machine", machine)
        out = capsys.readouterr().out
        assert code in (0, 1) and "summary" in out


def test_machine_files_are_found_by_name_in_the_working_checkout_or_where_seqvit_machines_points(tmp_path, monkeypatch):
    from seqvit.machines import machine_path

    monkeypatch.delenv("SEQVIT_MACHINES", raising=False)
    assert machine_path("frontier") == Path("config") / "machines" / "frontier.yaml"  # tests run in the checkout
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeqvitError, match=r"unknown machine 'frontier'.*set SEQVIT_MACHINES"):
        machine_path("frontier")
    monkeypatch.setenv("SEQVIT_MACHINES", str(ROOT / "config" / "machines"))
    assert machine_path("frontier") == ROOT / "config" / "machines" / "frontier.yaml"
    assert load_machine("frontier").devices_per_node == 8


def test_mfu_on_a_cpu_counts_every_core_a_rank_computes_on():
    # one rank with two threads on a two-core machine file: its peak is twice the one-core peak
    cfg = _cfg(DEMO, "train.threads=2")
    machine = load_machine("cpu-local")
    plan = plan_run(run_shape(cfg, 8), machine)
    one_core = machine.peak(plan.shape.precision)
    assert plan.mfu == pytest.approx(plan.flops["model_per_rank"] / plan.step_seconds / (2 * one_core))
    assert 0 < plan.mfu <= 1


def _long_run(**changes):
    """The sweep's p=1 run (1,036,800 tokens on sp=64 x dp=1, micro-batch 1 x 16, bf16, checkpointing on)."""
    from dataclasses import replace

    return replace(run_shape(_cfg(FRONTIER, *LSS), 1), **changes)


def test_ring_by_hand():
    machine = load_machine("frontier")
    shape = _long_run(sp_method="ring")
    plan = plan_run(shape, machine)
    b, n, e, f, h, a = 1, 16_200, 1024, 4096, 16, 2
    assert (shape.micro_batch, shape.local_tokens, shape.inner, shape.outer) == (b, n, 1, 64)
    # saved: the kernel's tensors as for one rank, plus the fp32 output (4 bytes x n E); no gathered K/V
    block = b * n * a * (8 * e + 2 * f) + 4 * b * n * e + 4 * b * n * h
    assert plan.memory["block recompute"] == pytest.approx(block - b * n * e * a)
    # backward: two bf16 K/V blocks, one fp32 block of scores and probabilities over n x n per head,
    # the travelling fp32 dK/dV and the fp32 dq
    ring = 2 * 2 * b * n * e * a + 2 * b * h * n * n * 4 + 2 * 2 * b * n * e * 4 + b * n * e * 4
    # the n x n scores dominate: 2 x 16 x 16,200^2 x 4 B = 33.59 GB, the rest (4 x 2 + 16 + 4) B x 16,200 x 1024 = 0.46 GB
    assert ring == pytest.approx(33.59e9 + 0.46e9, rel=1e-3)
    attention = b * n * a * (e - 2 * f) + ring
    assert plan.memory["backward working set"] == pytest.approx(max(attention, b * n * a * (f + e)))
    # traffic per layer: forward 63 hops of the K/V block (2 b n E a bytes), repeated by the recomputation;
    # backward 63 hops of K/V and 63 of the fp32 dK/dV. 64 ranks span 8 nodes: one rank of each node
    # sends to the next node (100 GB/s of NICs), every rank's block crosses the node's 50 GB/s links
    kv, dkv = 2 * b * n * e * a, 2 * b * n * e * 4
    assert (kv, dkv) == (66_355_200, 132_710_400)
    hop = lambda size: max(size / 50e9, size / 100e9) + 15e-6  # noqa: E731
    assert plan.comm["ring sends"] == pytest.approx(8 * 16 * 63 * (3 * hop(kv) + hop(dkv)))
    assert plan.comm["all-to-all"] == plan.comm["all-gather"] == plan.comm["reduce-scatter"] == 0
    # its blocks are fp32 matmuls: the attention FLOPs over the fp32 peak (47.9 TFLOP/s) x efficiency 0.35
    assert plan.compute["attention"] == pytest.approx(plan.flops["executed_attention_per_rank"] / (47.9e12 * 0.35))


def test_two_level_ulysses_lss_by_hand():
    machine = load_machine("frontier")
    shape = _long_run(sp_method="ulysses-lss", sp_inner=8)
    plan = plan_run(shape, machine)
    b, n, e, f, h, a, big_n = 1, 16_200, 1024, 4096, 16, 2, 1_036_800
    assert (shape.inner, shape.outer) == (8, 8)
    # the outer LSS sees 16 / 8 = 2 heads on 8 ranks: chunks of ceil(8 / 4) = 2 (parallel/lss.py), 1 head each
    assert shape.head_chunks == 2
    # saved: Ulysses' extra E, and K and V of the whole sequence at E / 8 wide
    gathered = 2 * b * big_n * (e // 8) * a
    assert gathered == pytest.approx(0.53e9, rel=1e-2)  # against 68 GB for LSS over all 64 ranks
    block = b * n * a * (8 * e + 2 * f + e) + gathered + 4 * b * n * h
    assert plan.memory["block recompute"] == pytest.approx(block - b * n * e * a)
    chunk = gathered / 2  # dK and dV of one chunk (bf16), its reduce-scatter buffer in fp32, the inner dK/dV buffer
    attention = b * n * a * (e - 2 * f) + chunk + 2 * chunk + 2 * b * n * e * a
    assert plan.memory["backward working set"] == pytest.approx(max(attention, b * n * a * (f + e)))
    # inner: the all-to-all of q, k, v (3 b n E a) and of the output (b n E a) over 8 ranks of a node,
    # 7/8 of each leaving the rank over 50 GB/s links, 8 us each; forward, recomputation and backward
    all_to_all = lambda size: 7 / 8 * size / 50e9 + 8e-6  # noqa: E731
    inner = 3 * (all_to_all(3 * b * n * e * a) + all_to_all(b * n * e * a))
    assert plan.comm["all-to-all"] == pytest.approx(8 * 16 * inner)
    # outer: 8 all-gathers of 2 b n E a / 2 bytes each (two chunks; forward and recomputation), 8 ranks 8 apart
    # over 8 nodes: each node takes in the other 56 ranks' segments through 100 GB/s (above 7 segments at
    # 50 GB/s), 7 steps of 15 us; the reduce-scatter sends the same segments in fp32
    segment = 2 * b * n * e * a / 2
    gather = lambda size: max(7 * size / 50e9, 56 * size / 100e9) + 7 * 15e-6  # noqa: E731
    assert plan.comm["all-gather"] == pytest.approx(8 * 16 * 2 * 2 * gather(segment))
    assert plan.comm["reduce-scatter"] == pytest.approx(8 * 16 * 2 * gather(2 * segment))


def test_outer_groups_of_one_level_methods_are_the_machine_collectives():
    from seqvit.plan.estimate import outer_seconds

    machine = load_machine("frontier")
    shape = _long_run()  # lss over all 64 ranks: one outer group, no inner level
    assert outer_seconds(machine, "all_gather", shape, 1e6) == machine.collective_seconds("all_gather", 64, 1e6)
    # a ring hop inside one node (sp = 8): the node's 50 GB/s links, 8 us
    assert outer_seconds(machine, "send", _long_run(sp_method="ring", sp=8, dp=8), 1e6) == pytest.approx(
        1e6 / 50e9 + 8e-6
    )


def test_layout_checks_are_trainings_own():
    with pytest.raises(SeqvitError, match="sp_inner"):
        _long_run(sp_method="ulysses-lss").check()  # sp_inner 1
    with pytest.raises(SeqvitError, match="sp_inner"):
        _long_run(sp_method="ulysses-ring", sp_inner=64).check()  # no outer level
    _long_run(sp_method="ulysses-ring", sp_inner=16).check()  # 16 divides 64 and the 16 heads


def test_window_attention_counts_window_flops_and_stays_on_one_rank():
    cfg = _cfg(DEMO, "model.attention_pattern=window", "model.window_size=2")
    shape = run_shape(cfg, 8)
    full = plan_run(run_shape(_cfg(DEMO), 8), load_machine("cpu-local"))
    window = plan_run(shape, load_machine("cpu-local"))
    assert shape.attention_pattern == "window" and shape.window_size == 2
    assert window.flops["executed_attention_per_rank"] < full.flops["executed_attention_per_rank"]
    assert window.flops["executed_matmul_per_rank"] == pytest.approx(full.flops["executed_matmul_per_rank"])
    from dataclasses import replace

    with pytest.raises(SeqvitError, match="window runs in one process per sample"):
        replace(shape, sp=2, dp=1).check()
    # the math kernel's scores cover a window's 2 x 2 keys instead of all N tokens
    b, h, n, a = shape.micro_batch, shape.num_heads, shape.local_tokens, 4 if shape.precision == "fp32" else 2
    math_window = plan_run(replace(shape, attention="math", activation_checkpointing=False), load_machine("cpu-local"))
    math_full = plan_run(
        replace(shape, attention="math", activation_checkpointing=False, attention_pattern="full"),
        load_machine("cpu-local"),
    )
    per_block = b * h * n * (shape.tokens - 2 * 2) * (4 + a)
    saved = math_full.memory["activations (saved)"] - math_window.memory["activations (saved)"]
    assert saved == pytest.approx(shape.depth * per_block)


def test_suggestions_include_ring_and_every_two_level_split():
    from seqvit.plan.suggest import candidates, question_shape, suggest

    cfg = _cfg(FRONTIER, *LSS)
    machine = load_machine("frontier")
    shape, own = question_shape(cfg, 4)  # 64,800 tokens, 16 heads, 8 GCDs per node
    at_16 = {(s.sp_method, s.sp_inner) for s in candidates(shape, machine, cfg) if s.sp == 16}
    # inner groups at sp = 16: divisors of 16 above 1 and below 16, dividing the 16 heads, at most 8 (a node)
    two_level = {(m, i) for m in ("ulysses-lss", "ulysses-ring") for i in (2, 4, 8)}
    one_level = {(m, 1) for m in ("ulysses", "deepspeed-ulysses", "lss", "ring")}
    assert at_16 == one_level | two_level
    ranked = suggest(shape, machine, cfg, own, max_nodes=4).ranked
    labels = {label for g in ranked for label in g.methods}
    assert {"ring", "ulysses-lss 2x8", "ulysses-ring 4x4"} <= labels
    best_two_level = next(g for g in ranked if g.plan.shape.inner > 1)
    s = best_two_level.plan.shape
    assert f"parallel.sp_method={s.sp_method}, parallel.sp_inner={s.sp_inner}" in best_two_level.apply()


def test_window_runs_are_suggested_on_one_rank_only():
    from seqvit.plan.suggest import candidates, question_shape

    cfg = _cfg(DEMO, "model.attention_pattern=window", "model.window_size=2")
    shape, _ = question_shape(cfg, 8)
    assert {s.sp for s in candidates(shape, load_machine("cpu-local"), cfg)} == {1}
