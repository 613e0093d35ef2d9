"""seqvit plan --suggest, weak scaling and --markdown: expectations from hand arithmetic written out here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from seqvit.cli import main
from seqvit.config import load_configs
from seqvit.errors import SeqvitError
from seqvit.plan import load_machine, parameter_count, plan_run, run_shape
from seqvit.plan.report import markdown, scenario_plans
from seqvit.plan.suggest import suggest_config, weak_scaling

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "config" / "frontier-seqscale.yaml"
CLAIMS = ROOT / "config" / "frontier-paper-claims.yaml"
DEMO = ROOT / "config" / "config.yaml"
GB = 1e9


def _plan_cli(*args) -> int:
    try:
        return main(["plan", *args])
    except SystemExit as exc:
        return exc.code


def _rows(result) -> set[tuple]:
    return {
        (g.plan.shape.sp, g.plan.shape.dp, g.plan.shape.grad_accumulation, g.plan.shape.zero_stage)
        + (g.plan.shape.activation_checkpointing,)
        for g in result.ranked
    }


def test_a_layout_that_fits_by_hand_is_listed():
    cfg = load_configs([SWEEP])
    result = suggest_config(cfg, patch_size=24, machine_name="frontier")
    assert result.max_nodes == 1  # the run's own layout, sp=1 x dp=8, takes one node
    # Every rank of 8 holding the whole 1,800-token sequence, 2 samples, no ZeRO, no checkpointing.
    # A generous upper bound, in bf16 (2 bytes): weights and gradients, fp32 master weights, m and v
    # (16 bytes a parameter); per block at most 20 n E + 4 n F + 4 n H values per sample; the C
    # per-channel embeddings, the tokens, targets and output of p x p pixels, and the position table;
    # and the 2 GB the runtime keeps.
    phi = parameter_count(run_shape(cfg, 24))
    n, e, f, h, depth, b, p = 1_800, 1024, 4096, 16, 8, 2, 24
    c = 3 + 5 * 2  # t2m, u10, v10 and five variables on two levels
    blocks = depth * b * 2 * n * (20 * e + 4 * f + 4 * h)
    embedding_and_head = b * 2 * n * (c * e + 3 * c * p * p) + 2 * n * e
    bound = 16 * phi + blocks + embedding_and_head + 2e9
    assert bound < 64e9
    assert (1, 8, 1, 0, False) in _rows(result)
    assert all(g.nodes <= 1 and g.plan.fits for g in result.ranked)


def test_a_layout_that_cannot_fit_is_not_listed(tmp_path):
    """~9.7 B parameters: without ZeRO every rank keeps 16 bytes a parameter, 155 GB, over 64 GB."""
    overlay = tmp_path / "10b.yaml"
    overlay.write_text("model: {embed_dim: 4096, depth: 48, num_heads: 32}\n")
    cfg = load_configs([SWEEP, overlay])
    assert 16 * parameter_count(run_shape(cfg, 8)) > 150e9
    result = suggest_config(cfg, patch_size=8, machine_name="frontier", max_nodes=16)
    assert result.ranked, "ZeRO-2 and -3 over enough ranks do fit"
    assert all(g.plan.shape.zero_stage > 0 for g in result.ranked)
    # Ulysses gives every rank heads / sp heads: 32 heads, so an sp that does not divide 32 is LSS only
    for g in result.ranked:
        if 32 % g.plan.shape.sp:
            assert g.methods == ("lss",)
        elif "ulysses" in g.methods:
            assert "deepspeed-ulysses" in g.methods  # the estimate cannot tell them apart: one row


def test_layouts_are_ranked_by_predicted_throughput():
    cfg = load_configs([SWEEP])
    result = suggest_config(cfg, patch_size=2, machine_name="frontier")
    speeds = [g.plan.tokens_per_s for g in result.ranked]
    assert len(speeds) > 10 and speeds == sorted(speeds, reverse=True)
    # tokens/s counts each sample's 259,200 tokens once: 16 samples a step
    best = result.ranked[0].plan
    assert best.tokens_per_s == pytest.approx(16 * 259_200 / best.step_seconds)
    # the config's own run (sp=16 x dp=2 on 4 nodes) is among them, and no row needs more nodes
    assert result.max_nodes == 4 and all(g.nodes <= 4 for g in result.ranked)
    own = run_shape(cfg, 2)
    assert (own.sp, own.dp, own.grad_accumulation, own.zero_stage, own.activation_checkpointing) in _rows(result)
    # 16 heads: sp=32 (4 nodes) is there, without the Ulysses methods over all 32 ranks
    wide = [g for g in result.ranked if g.plan.shape.sp == 32]
    assert wide and not {m for g in wide for m in g.methods} & {"ulysses", "deepspeed-ulysses"}


def test_cli_suggest_for_a_sequence_length(capsys):
    code = _plan_cli("--config", str(SWEEP), "--suggest", "--tokens", "188416", "--max-nodes", "2")
    out = capsys.readouterr().out
    assert code == 0
    # 720 x 1440 cells over 188,416 tokens: 5.5 pixels a token, the nearest square patch is 2 x 2
    assert "188,416 tokens of 2 x 2 pixels" in out and "on up to 2 nodes" in out
    table = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(table) == 10
    assert "the first as config keys: parallel.runs.2: {sp:" in out
    assert _plan_cli("--config", str(SWEEP), "--suggest") == 2
    assert "--patch-size P" in capsys.readouterr().err
    assert _plan_cli("--config", str(SWEEP), "--suggest", "--tokens", "0") == 2
    assert "--tokens 0: must be at least 1" in capsys.readouterr().err


def test_nothing_fits_exits_1(capsys, tmp_path):
    # fp32 on cpu-local (8 GB a rank): one block of 16384 wide holds 12 x 16384^2 weights, 12.9 GB in
    # fp32, which even ZeRO-3 gathers whole on every rank
    overlay = tmp_path / "huge.yaml"
    overlay.write_text("model: {embed_dim: 16384, depth: 1, num_heads: 4}\n")
    assert 4 * 12 * 16384**2 > 8e9
    code = _plan_cli("--config", str(DEMO), "--config", str(overlay), "--suggest", "--patch-size", "8")
    assert code == 1 and "no layout on up to" in capsys.readouterr().out


def test_weak_scaling_changes_only_the_gradient_all_reduce_by_hand():
    cfg = load_configs([SWEEP])
    machine = load_machine("frontier")
    shape = run_shape(cfg, 24)  # sp=1 x dp=8, 2 samples per replica, ZeRO-1: a plain all-reduce
    scaling = weak_scaling(shape, machine, 256)
    assert (scaling.base_nodes, scaling.nodes) == (1, 256)
    assert scaling.scaled.shape.world == 2048 and scaling.scaled.shape.batch_size == 2 * 2048
    grads = 2 * parameter_count(shape)  # bf16 gradients
    # Frontier file: 8 ranks in a node at 50 GB/s and 8 us; between nodes 100 GB/s per node and 15 us
    ring_in_node = 2 * 7 / 8 * grads / 50e9 + 2 * 7 * 8e-6
    inside = 2 * 2047 / 2048 * grads / 50e9
    network = 2 * 255 / 256 * grads / 100e9
    ring_256_nodes = max(inside, network) + 2 * 2047 * 15e-6
    compute = plan_run(shape, machine).compute_seconds  # per device, the same at every scale
    assert scaling.efficiency == pytest.approx((compute + ring_in_node) / (compute + ring_256_nodes), rel=1e-9)
    # one replica of the p=1 run spans 8 nodes: it cannot weak-scale within 4
    assert weak_scaling(run_shape(cfg, 1), machine, 4) is None


def test_paper_claims_config_plans_every_scenario():
    cfg = load_configs([CLAIMS])
    plans = {scenario["name"]: plan for scenario, plan in scenario_plans(cfg)}
    assert set(plans) == {"188K tokens, full attention", "~10B parameters", "weak scaling, 1 to 256 nodes"}
    assert plans["188K tokens, full attention"].shape.tokens == 188_416
    assert 9e9 < plans["~10B parameters"].params < 11e9
    assert all(plan.fits for plan in plans.values())
    own = plan_run(run_shape(cfg, 1), load_machine("frontier"))  # the config's own run: 720 x 1440 tokens
    assert own.shape.tokens == 1_036_800 and own.fits


def test_a_scenario_training_would_refuse_is_named(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(
        "plan:\n  scenarios:\n    - name: too many ranks for the heads\n      patch_size: 4\n"
        "      overlay: {parallel: {sp_method: ulysses, runs: {4: {sp: 32, dp: 1}}}}\n"
    )
    cfg = load_configs([CLAIMS, overlay])
    with pytest.raises(SeqvitError, match=r"plan.scenarios 'too many ranks for the heads'.*model.num_heads \(16\)"):
        scenario_plans(cfg)


def test_docs_scale_md_is_what_the_planner_writes(tmp_path):
    """docs/scale.md cannot drift from the planner: regenerate it and compare."""
    written = tmp_path / "scale.md"
    assert _plan_cli("--markdown", str(written)) == 0
    current = (ROOT / "docs" / "scale.md").read_text()
    assert written.read_text() == current, "docs/scale.md is stale: run `seqvit plan --markdown` and commit it"
    # the sweep, the claims and the machine's sources are in it
    for text in ("config/frontier-seqscale.yaml", "config/frontier-paper-claims.yaml", "paper: 94%"):
        assert text in current
    assert "OLCF Frontier user guide" in current


def test_the_cpu_validation_table_is_included_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQVIT_MACHINES", str(ROOT / "config" / "machines"))
    monkeypatch.chdir(tmp_path)  # the document is written in (and reads docs/ of) the working folder
    text = markdown([DEMO])
    assert "Not generated yet: `benchmarks/plan_validation.py` writes `docs/plan-validation.md`" in text
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "plan-validation.md").write_text("# Measured\n\n| run | GB |\n| --- | --- |\n| p=8 | 1.5 |\n")
    text = markdown([DEMO])
    assert "## Measured" in text and "| p=8 | 1.5 |" in text and "Not generated yet" not in text


def test_suggestions_keep_the_global_batch_and_model():
    cfg = load_configs([SWEEP])
    result = suggest_config(cfg, patch_size=8, machine_name="frontier", max_nodes=2)
    shape = run_shape(cfg, 8)
    for g in result.ranked:
        s = g.plan.shape
        assert s.batch_size == 16 and (s.embed_dim, s.depth, s.num_heads) == (shape.embed_dim, 8, 16)
        assert s.micro_batch * s.grad_accumulation * s.dp == 16
        assert g.nodes == math.ceil(s.world / 8) <= 2
