"""seqvit plan --calibrate: what it measures and how it rewrites a machine file.

Expected values come from timings made here, independently of seqvit.plan.calibrate, and from
the machine model's formulas written out by hand.
"""

from __future__ import annotations

import datetime
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from seqvit.cli import main
from seqvit.errors import SeqvitError
from seqvit.plan.calibrate import QUICK, calibrate, fit_collective, update_machine_file
from seqvit.plan.machine import load_machine

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCAL = ROOT / "config" / "machines" / "cpu-local.yaml"


def _direct_matmul_gflops() -> float:
    """Best GFLOP/s of 512 x 512 fp32 matmuls on one thread, timed here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(20))
    finally:
        torch.set_num_threads(previous)
    return 2 * 512**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.workflow  # spawns gloo worlds and two fresh training processes (about 20-40 s)
def test_calibration_writes_sane_figures_and_keeps_the_comments(tmp_path):
    path = tmp_path / "cpu-local.yaml"
    shutil.copy(CPU_LOCAL, path)
    comments = [line for line in CPU_LOCAL.read_text().splitlines() if line.lstrip().startswith("#")]
    calibrate(str(path), QUICK, log=lambda *a: None)

    text = path.read_text()
    assert all(line in text.splitlines() for line in comments)  # every full-line comment kept
    assert "# (measured) square matmuls, one thread" in text  # and the comment after a rewritten value
    machine = load_machine(str(path))
    direct = _direct_matmul_gflops()
    fp32 = machine.peak_flops["fp32"] / 1e9
    assert direct / 10 < fp32 < direct * 10, (fp32, direct)
    assert machine.peak_flops["bf16"] > 0
    # attention does more than matmuls (softmax, rescaling): slower than the matmul peak, not absurdly so
    for precision in ("fp32", "bf16"):
        assert 0.005 * fp32 * 1e9 < machine.attention_flops[precision] < 5 * machine.peak_flops[precision]
    assert all(0.01e9 < machine.elementwise[p] < 1000e9 for p in ("fp32", "bf16"))
    assert machine.cores_per_node == len(__import__("os").sched_getaffinity(0))
    (level,) = machine.levels  # QUICK measures groups of 2
    assert level.ranks == 2 and set(level.collectives) == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    for bandwidth, latency in level.collectives.values():
        assert 1e6 < bandwidth < 1e12 and 0 < latency < 1.0
    # a fresh training process adds some MB beyond its tensors, not GB; the framework's time is ms
    assert 1e6 < machine.overhead < 2e9 and 0 <= machine.zero_overhead < 2e9
    assert 0 <= machine.step_overhead < 1.0 and 0 <= machine.block_overhead < 1.0
    stamp = yaml.safe_load(text)["calibrated"]
    assert stamp["date"] == datetime.date.today().isoformat()
    assert stamp["torch"] == str(torch.__version__)
    assert stamp["cpu"] and stamp["cpu"] in Path("/proc/cpuinfo").read_text()
    # the hand-written keys are untouched
    assert machine.memory == 8e9 and machine.devices_per_node == 8 and machine.node_bandwidth == 1e9


def test_fit_recovers_bandwidth_and_latency_from_the_model_formula():
    # 4 ranks, ring all-gather of s bytes per rank: 3 s / bw + 3 lat (machine.collective_seconds)
    bw, lat = 2e9, 50e-6
    small, large = 1024, 1 << 22
    timings = [(s, 3 * s / bw + 3 * lat) for s in (small, large)]
    fitted_bw, fitted_lat = fit_collective("all_gather", 4, *timings)
    assert fitted_bw == pytest.approx(bw) and fitted_lat == pytest.approx(lat)
    # all-to-all: (g-1)/g of the buffer leaves each rank, one latency
    timings = [(s, 0.75 * s / bw + lat) for s in (small, large)]
    assert fit_collective("all_to_all", 4, *timings) == pytest.approx((bw, lat))
    # noise that makes the large timing no longer than the small one: all bandwidth, a floor latency
    fitted_bw, fitted_lat = fit_collective("all_reduce", 2, (small, 1e-3), (large, 1e-3))
    assert fitted_bw == pytest.approx(1.0 * large / 1e-3) and fitted_lat > 0


def test_update_machine_file_rewrites_values_in_place(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "# header\nname: m\npeak_tflops: {fp32: 1}   # (measured) matmuls\nlevels:   # per group\n"
        "  - {name: a, ranks: 8, bandwidth_gbs: 5, latency_us: 50}\n# before network\nnetwork: {x: 1}\n"
    )
    update_machine_file(
        path,
        {
            "peak_tflops": {"fp32": 0.5, "bf16": 0.25},
            "levels": [{"name": "two", "ranks": 2, "bandwidth_gbs": 1.5, "latency_us": 9.0}],
            "cores_per_node": 2,
        },
    )
    assert path.read_text().splitlines() == [
        "# header",
        "name: m",
        "peak_tflops: {fp32: 0.5, bf16: 0.25}  # (measured) matmuls",  # past its column: two spaces
        "levels:   # per group",  # in its column
        "  - {name: two, ranks: 2, bandwidth_gbs: 1.5, latency_us: 9.0}",
        "# before network",
        "network: {x: 1}",
        "cores_per_node: 2",
    ]


def test_calibrate_names_an_unknown_machine(capsys):
    assert main(["plan", "--calibrate", "--machine", "no-such-machine"]) == 2
    err = capsys.readouterr().err
    assert "unknown machine 'no-such-machine' (config key machine or --machine)" in err and "cpu-local" in err
    with pytest.raises(SeqvitError, match="unknown machine"):
        calibrate("no-such-machine", QUICK)
