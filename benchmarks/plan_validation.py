"""The planner against real CPU training runs: predicted and measured memory and step time, side by side.

    .venv/bin/python benchmarks/plan_validation.py                  # calibrate, then 15 runs (~9 min, 2 cores)
    .venv/bin/python benchmarks/plan_validation.py --quick          # tiny configurations: a smoke run (~1.5 min)
    .venv/bin/python benchmarks/plan_validation.py --no-calibrate --machine config/machines/cpu-local.yaml

1. Calibrates this machine right before measuring (`seqvit plan --calibrate`, seqvit.plan.calibrate)
   into a copy of config/machines/cpu-local.yaml (--write-machine: into that file itself).
2. Runs every configuration below in its own world of fresh processes
   (seqvit.plan.calibrate.measure_training): real processes joined by gloo, one thread each, the
   model and DeepSpeed set-up of train/engine.py and its step (forward, loss of the rank's
   segment, backward, optimizer), on random tokens of an ERA5-like grid. Step time: the median
   over the measured steps (after warm-up) of the slowest rank's step. Memory: the largest, over
   ranks, of the resident set's high-water mark (VmHWM, reset after imports and before the model
   is built) minus the resident set at that moment, in a second world where glibc returns freed
   blocks to the system (so the resident set follows live memory): what a training process adds
   to its imports. The peak of the timed world, glibc keeping freed blocks for reuse, is in the
   JSON as resident_mb.
3. Predicts each with the planner (seqvit.plan.estimate.plan_run) on the calibrated machine file
   and prints both with their ratio (predicted / measured). Goals: memory within 15%, step time
   within 30%, for every configuration.

The configurations span P = 1, 2, 4 (one process per rank; P = 4 puts two ranks on each of two
cores), each sequence-parallel method, ZeRO 0 and 3, activation checkpointing on and off, one
data-parallel layout, bf16, and sequences of 512 and 2,048 tokens. The table goes to --out
(markdown, default docs/plan-validation.md) and the same name with .json. Timings on a shared
machine are noisy: each run first waits (up to --max-wait s) until other processes keep less than
0.3 cores busy, and the table shows how many cores they kept busy while the steps were timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqvit.plan.calibrate import QUICK, Sizes, calibrate, cpu_model, measure_training  # noqa: E402
from seqvit.plan.estimate import RunShape, plan_run  # noqa: E402
from seqvit.plan.machine import load_machine  # noqa: E402

MB = 2**20
GOALS = {"memory": 0.15, "time": 0.30}
QUIET = 0.3  # cores other processes may keep busy for a timing to count as taken on a quiet machine

# 4 channels of 2 x 2 pixels, width 256, 4 heads of 64, depth 2, MLP ratio 4, fp32
BASE = RunShape(
    patch_size=2,
    channels=4,
    tokens=512,
    embed_dim=256,
    depth=2,
    num_heads=4,
    mlp_ratio=4.0,
    attention="sdpa",
    batch_size=8,
    grad_accumulation=1,
    zero_stage=0,
    precision="fp32",
    activation_checkpointing=False,
    sp=1,
    dp=1,
    sp_method="ulysses",
    patch_rows=16,
    patch_cols=32,
)
SHORT = {"tokens": 512, "patch_rows": 16, "patch_cols": 32}  # a 32 x 64 grid
LONG = {"tokens": 2048, "patch_rows": 32, "patch_cols": 64}  # a 64 x 128 grid


def configurations() -> list[tuple[str, RunShape]]:
    def make(sp, method, length, batch, zero, ckpt, **extra):
        shape = replace(
            BASE,
            sp=sp,
            sp_method=method,
            batch_size=batch,
            zero_stage=zero,
            activation_checkpointing=ckpt,
            **length,
            **extra,
        )
        name = f"P{sp}{f'xD{shape.dp}' if shape.dp > 1 else ''} {method if sp > 1 else '-'}"
        return name, shape

    return [
        make(1, "ulysses", SHORT, 8, 0, False),
        make(1, "ulysses", LONG, 2, 0, False),
        make(1, "ulysses", LONG, 2, 3, True),
        make(1, "ulysses", SHORT, 8, 0, False, precision="bf16"),
        make(2, "ulysses", LONG, 4, 0, False),
        make(2, "lss", LONG, 4, 0, False),
        make(2, "deepspeed-ulysses", SHORT, 16, 0, False),
        make(2, "lss", SHORT, 16, 3, True),
        make(2, "ulysses", SHORT, 16, 3, False),
        make(2, "ulysses", SHORT, 16, 0, False, dp=2),
        make(4, "ulysses", LONG, 8, 0, True),
        make(4, "lss", LONG, 8, 0, False),
        make(4, "deepspeed-ulysses", LONG, 8, 3, False),
        make(4, "lss", SHORT, 32, 0, True),
        make(4, "ulysses", SHORT, 32, 3, True),
    ]


def quick_configurations() -> list[tuple[str, RunShape]]:
    small = {"embed_dim": 64, "tokens": 128, "patch_rows": 8, "patch_cols": 16}
    picked = [configurations()[i] for i in (0, 2, 4, 7)]  # P = 1 and 2, both ZeRO stages, checkpointing, LSS
    return [(name, replace(shape, **small, batch_size=2 * shape.sp)) for name, shape in picked]


def _busy_cores(seconds: float) -> float:
    """Cores the machine keeps busy (every process) over the next `seconds`."""
    from seqvit.plan.calibrate import _busy_seconds

    before = _busy_seconds()
    time.sleep(seconds)
    return (_busy_seconds() - before) / seconds


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait seconds) until other processes keep less than `threshold` cores busy."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = _busy_cores(2.0)
        if busy < threshold or time.monotonic() > deadline:
            return busy


def _row(name: str, shape: RunShape, machine, measured, load: float) -> dict:
    plan = plan_run(shape, machine)
    return {
        "name": name,
        "P": shape.sp,
        "D": shape.dp,
        "method": shape.sp_method if shape.sp > 1 else "-",
        "zero": shape.zero_stage,
        "checkpointing": shape.activation_checkpointing,
        "precision": shape.precision,
        "tokens": shape.tokens,
        "batch": shape.batch_size,
        "memory_predicted_mb": plan.peak / MB,
        "memory_measured_mb": measured.peak_bytes / MB,
        "resident_mb": measured.resident_bytes / MB,
        "memory_ratio": plan.peak / measured.peak_bytes,
        "step_predicted_s": plan.step_seconds,
        "step_measured_s": measured.step_seconds,
        "step_ratio": plan.step_seconds / measured.step_seconds,
        "steps_s": list(measured.seconds),
        "step_cpu_s": measured.cpu_seconds,
        "others_cores": measured.others_cores,
        "busy_before_cores": load,
        "predicted_memory_parts_mb": {k: v / MB for k, v in plan.memory.items()},
        "predicted_time_parts_s": {**plan.compute, **{k: v for k, v in plan.comm.items() if v}},
        "shape": asdict(shape),
    }


def _header() -> str:
    return (
        f"{'configuration':<26}{'ZeRO':>5}{'ckpt':>5}{'prec':>5}{'N':>6}{'B':>4}"
        f"{'memory MB pred':>16}{'meas':>8}{'ratio':>7}{'step s pred':>13}{'meas':>8}{'ratio':>7}{'others':>8}"
    )


def _line(r: dict) -> str:
    return (
        f"{r['name']:<26}{r['zero']:>5}{'on' if r['checkpointing'] else 'off':>5}{r['precision']:>5}"
        f"{r['tokens']:>6}{r['batch']:>4}{r['memory_predicted_mb']:>16.0f}{r['memory_measured_mb']:>8.0f}"
        f"{r['memory_ratio']:>7.2f}{r['step_predicted_s']:>13.3f}{r['step_measured_s']:>8.3f}"
        f"{r['step_ratio']:>7.2f}{r['others_cores']:>8.2f}"
    )


def _verdict(rows: list[dict]) -> dict:
    quiet = [r for r in rows if r["others_cores"] < QUIET]
    worst = {
        "memory": max(abs(r["memory_ratio"] - 1) for r in rows),
        "time": max(abs(r["step_ratio"] - 1) for r in rows),
        "time_quiet": max((abs(r["step_ratio"] - 1) for r in quiet), default=float("nan")),
    }
    goals = {**GOALS, "time_quiet": GOALS["time"]}
    out = {kind: {"worst": worst[kind], "goal": goals[kind], "met": worst[kind] <= goals[kind]} for kind in goals}
    out["time_quiet"]["rows"] = len(quiet)
    return out


def _model_words(rows: list[dict]) -> str:
    s = rows[0]["shape"]
    lengths = sorted({(r["shape"]["tokens"], r["shape"]["patch_rows"], r["shape"]["patch_cols"]) for r in rows})
    grids = " and ".join(f"{n:,} ({r} x {c} patches)" for n, r, c in lengths)
    p = s["patch_size"]
    return (
        f"{s['channels']} channels of {p} x {p} pixels, width {s['embed_dim']}, {s['num_heads']} heads of "
        f"{s['embed_dim'] // s['num_heads']}, depth {s['depth']}, MLP ratio {s['mlp_ratio']:g}; sequences of {grids} "
        "tokens"
    )


def markdown(rows: list[dict], machine, calibration: dict, started: str, command: str) -> str:
    verdict = _verdict(rows)
    m = machine
    lines = [
        "# The planner against measured CPU training runs",
        "",
        f"Written by `{command}` ({started}; benchmarks/plan_validation.py says how it measures).",
        f"Machine: {calibration.get('cpu', cpu_model())}, {m.cores_per_node} cores, torch "
        f"{calibration.get('torch', '?')}; calibrated right before: matmul "
        f"{m.peak_flops['fp32'] / 1e9:.0f} (fp32) and {m.peak_flops['bf16'] / 1e9:.0f} (bf16) GFLOP/s, attention "
        f"{m.attention_flops.get('fp32', 0) / 1e9:.0f} / {m.attention_flops.get('bf16', 0) / 1e9:.0f} GFLOP/s, "
        f"elementwise {m.elementwise.get('fp32', 0) / 1e9:.1f} / {m.elementwise.get('bf16', 0) / 1e9:.1f} GB/s per "
        "core; runtime overhead "
        f"{m.overhead / MB:.0f} MB (+{m.zero_overhead / MB:.0f} MB with ZeRO, "
        f"+{m.precision_overhead.get('bf16', 0) / MB:.0f} MB in bf16), framework "
        f"{m.step_overhead * 1e3:.1f} ms per step, {m.block_overhead * 1e3:.2f} ms per block "
        f"(+{m.zero3_block_overhead * 1e3:.2f} ms under ZeRO-3).",
        "",
        f"Model: {_model_words(rows)}; one thread per rank (P = 4: two ranks per core). "
        "Memory: what a fresh training process adds to its imports (VmHWM minus the resident set "
        "before the model is built, MiB), largest over ranks; step: median of the slowest rank's "
        "steps after warm-up. Ratio = predicted / measured.",
        "",
        "| configuration | ZeRO | checkpointing | precision | N | batch | memory predicted | measured | ratio "
        "| step predicted | measured | ratio | others |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['zero']} | {'on' if r['checkpointing'] else 'off'} | {r['precision']} | "
            f"{r['tokens']:,} | {r['batch']} | {r['memory_predicted_mb']:.0f} MB | {r['memory_measured_mb']:.0f} MB | "
            f"{r['memory_ratio']:.2f} | {r['step_predicted_s']:.3f} s | {r['step_measured_s']:.3f} s | "
            f"{r['step_ratio']:.2f} | {r['others_cores']:.2f} |"
        )
    lines += [
        "",
        f"Largest deviation: memory {verdict['memory']['worst']:.1%} (goal {GOALS['memory']:.0%}: "
        f"{'met' if verdict['memory']['met'] else 'NOT met'}), step time {verdict['time']['worst']:.1%} "
        f"(goal {GOALS['time']:.0%}: {'met' if verdict['time']['met'] else 'NOT met'}); step time over the "
        f"{verdict['time_quiet']['rows']} runs timed on a quiet machine {verdict['time_quiet']['worst']:.1%}. "
        "The others column is the number of cores other processes kept busy, on average, while the steps "
        "were timed (the machine's busy time less the ranks' own CPU time; a virtual machine's stolen time "
        f"counts): the planner assumes the cores are the run's, so a run with others above {QUIET} cores is "
        "slower than predicted by about that share. Each run first waits (up to --max-wait seconds) for "
        "the machine to be quiet.",
        "",
        "The planner predicts live memory. With glibc's defaults, which keep freed blocks for reuse, the same "
        f"runs peaked {min(r['resident_mb'] / r['memory_measured_mb'] for r in rows):.2f} to "
        f"{max(r['resident_mb'] / r['memory_measured_mb'] for r in rows):.2f} times higher (resident_mb in the "
        "JSON); on a CPU node that margin is the allocator's, not the model's.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "plan-validation.md"), help="markdown table (and .json)")
    parser.add_argument("--machine", help="machine file to calibrate and predict with (default: a copy of cpu-local)")
    parser.add_argument("--write-machine", action="store_true", help="calibrate config/machines/cpu-local.yaml itself")
    parser.add_argument("--no-calibrate", action="store_true", help="predict with the machine file as it is")
    parser.add_argument("--quick", action="store_true", help="tiny configurations and calibration: a smoke run")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--max-wait", type=float, default=90, help="seconds to wait for a quiet machine before a run")
    args = parser.parse_args()

    started = datetime.datetime.now().isoformat(timespec="minutes")
    with tempfile.TemporaryDirectory() as tmp:
        source = ROOT / "config" / "machines" / "cpu-local.yaml"
        if args.write_machine:
            machine_file = source
        elif args.machine:
            machine_file = Path(args.machine)
        else:
            machine_file = Path(tmp) / "cpu-local.yaml"
            shutil.copy(source, machine_file)
        if not args.no_calibrate:
            print(f"calibrating {machine_file} ...", flush=True)
            calibrate(str(machine_file), QUICK if args.quick else Sizes())
        machine = load_machine(str(machine_file))
        configs = quick_configurations() if args.quick else configurations()
        rows = []
        print(_header(), flush=True)
        for name, shape in configs:
            load = wait_for_quiet(args.max_wait)
            (measured,) = measure_training([shape], steps=args.steps, warmup=args.warmup)
            rows.append(_row(name, shape, machine, measured, load))
            print(_line(rows[-1]), flush=True)
        verdict = _verdict(rows)
        print(f"runs timed with other processes below {QUIET} cores: {verdict['time_quiet']['rows']} of {len(rows)}")
        for kind, v in verdict.items():
            print(
                f"largest {kind} deviation {v['worst']:.1%} (goal {v['goal']:.0%}): {'met' if v['met'] else 'NOT met'}"
            )
        command = " ".join(["python benchmarks/plan_validation.py", *sys.argv[1:]])
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(rows, machine, machine.calibrated, started, command))
        payload = {
            "started": started,
            "finished": datetime.datetime.now().isoformat(timespec="minutes"),
            "machine": {k: v for k, v in asdict(machine).items() if k != "levels"},
            "levels": [asdict(level) for level in machine.levels],
            "rows": rows,
            "verdict": verdict,
        }
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
