"""benchmarks/gpu_check.py --dry-run: every section runs on the CPU with tiny sizes and writes its JSON.

The GPU figures themselves come only from a GPU run (benchmarks/README.md); here the script's
plumbing is checked: the structure of the JSON, the arithmetic behind its rates, the choice of
sequence length, the sp=2 steps against one process (1e-5, as tests/test_parallel_attention.py),
the collectives per layer that parallel/comm_stats.py documents, and that a failing section is
recorded while the others still run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_check(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--device", "cpu", "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = out / "gpu_check.json"
    assert path.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(path.read_text())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    proc, report = run_check(tmp_path_factory.mktemp("gpu_check"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, report


def test_every_section_ran_and_says_what_only_a_gpu_measures(dry_run):
    proc, report = dry_run
    assert report["dry_run"] is True and report["environment"]["device"] == "cpu"
    assert {name: s["status"] for name, s in report["sections"].items()} == {
        "kernels": "ok",
        "training": "ok",
        "two_ranks": "ok",
    }
    skipped = " ".join(report["gpu_only_skipped"])
    assert "max_memory_allocated" in skipped and "nccl" in skipped
    assert "== kernels ==" in proc.stdout and "gloo on cpu tensors carries" in proc.stdout


def test_kernels_section(dry_run):
    _, report = dry_run
    kernels = report["sections"]["kernels"]
    # the math backend is SDPA's C++ reference, available everywhere; cuDNN is a CUDA library
    assert kernels["sdpa_backends"]["MATH"] == {"runs": True}
    assert kernels["sdpa_backends"]["CUDNN_ATTENTION"]["runs"] is False
    matmul = kernels["matmul"]
    assert matmul["n"] == 256 and matmul["dtype"] == "bf16"
    assert matmul["tflops"] == pytest.approx(2 * 256**3 / matmul["median_s"] / 1e12, rel=1e-9)
    rows = [row for row in kernels["attention"] if "ms" in row]
    assert {row["kernel"] for row in rows} >= {"sdpa (default choice)", "sdpa MATH"}
    assert {(row["head_dim"], row["tokens"]) for row in rows} == {(16, 128), (16, 256), (32, 128), (32, 256)}
    for row in rows:
        assert row["heads"] * row["head_dim"] == 64  # the dry run's width
        flops = 12 * row["tokens"] ** 2 * row["heads"] * row["head_dim"]  # forward 4 N^2 H d, backward 8
        assert row["tflops"] == pytest.approx(flops / (row["ms"] / 1e3) / 1e12, rel=1e-9)
        assert row["vs_matmul"] == pytest.approx(row["tflops"] / matmul["tflops"], rel=1e-9)


def test_training_section_takes_the_longest_sequence_within_the_dry_run_cap(dry_run):
    _, report = dry_run
    training = report["sections"]["training"]
    frontier = yaml.safe_load((ROOT / "config" / "frontier-seqscale.yaml").read_text())
    assert training["grid"] == "5.625deg" and training["model"]["attention"] == frontier["model"]["attention"]
    # 5.625 deg: 32 x 64 cells; the config's patch sizes that divide both, at most 1024 tokens
    rows, cols = 32, 64
    fitting = {
        p: (rows // p) * (cols // p) for p in frontier["tokenize"]["patch_sizes"] if rows % p == 0 and cols % p == 0
    }
    longest = max((p for p, n in fitting.items() if n <= 1024), key=fitting.get)
    assert {c["patch_size"]: c["tokens"] for c in training["candidates"]} == fitting
    assert [c["patch_size"] for c in training["not_planned"]] == [
        p for p in frontier["tokenize"]["patch_sizes"] if p not in fitting
    ]

    run = training["run"]
    assert (run["patch_size"], run["tokens"]) == (longest, fitting[longest])
    assert run["channels"] == len(frontier["data"]["single_level"]) + len(frontier["data"]["pressure_level"]) * len(
        frontier["data"]["levels"]
    )
    assert len(run["step_s"]) == 1 and len(run["losses"]) == 2 and all(math.isfinite(x) for x in run["losses"])
    assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["median_step_s"], rel=1e-9)
    datasheet = yaml.safe_load((ROOT / "config" / "machines" / "cpu-local.yaml").read_text())["peak_tflops"]["bf16"]
    assert training["machine"] == {"name": "cpu-local", "datasheet_bf16_tflops": pytest.approx(datasheet)}
    assert run["mfu_vs_datasheet"] == pytest.approx(run["model_tflops"] / datasheet, rel=1e-9)
    assert run["predicted_peak_gib"] > run["predicted_peak_without_overhead_gib"] > 0
    assert "peak_allocated_gib" not in run


def test_two_ranks_match_one_process_and_use_the_documented_collectives(dry_run):
    _, report = dry_run
    two = report["sections"]["two_ranks"]
    assert two["gloo_device"] == "cpu"
    supported = set(two["gloo_supports"])
    assert {"all_reduce", "all_to_all_single"} <= supported
    assert supported & {"all_gather_single", "all_gather_into_tensor"}
    assert supported & {"reduce_scatter_single", "reduce_scatter_tensor"}
    depth, steps = 2, report["sizes"]["sp_steps"]  # the small model's depth; + one extra forward at step 0
    for method, per_rank in two["sp2"].items():
        assert len(per_rank) == 2
        for result in per_rank:
            assert "error" not in result, result
            for key in ("output_rel_error", "grad_rel_error", "loss_rel_error", "param_rel_error"):
                assert result[key] < 1e-5, (method, key, result[key])
            seen = result["collectives"]
            assert seen["all_reduce on cpu"] == steps  # one gradient all-reduce per step
            # parallel/comm_stats.py: ulysses 2 all-to-all per layer forward and 2 backward; lss one
            # all-gather forward and one reduce-scatter backward
            if method == "ulysses":
                assert seen["all_to_all_single on cpu"] == steps * depth * 4 + depth * 2
            else:
                gathers = sum(n for k, n in seen.items() if k.startswith("all_gather"))
                scatters = sum(n for k, n in seen.items() if k.startswith("reduce_scatter"))
                assert (gathers, scatters) == (steps * depth + depth, steps * depth)
            assert all(key.endswith(" on cpu") for key in seen)
    assert set(two["sp2"]) == {"ulysses", "lss"}
    assert two["two_ranks_on_one_device"] == "gloo carries sp=2 training for ulysses, lss"


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path):
    missing = tmp_path / "no-such-config.yaml"
    proc, report = run_check(tmp_path / "out", "--sections", "training", "--config", str(missing))
    assert proc.returncode == 1
    training = report["sections"]["training"]
    assert training["status"] == "failed" and str(missing) in training["error"]
    assert list(report["sections"]) == ["training"]
