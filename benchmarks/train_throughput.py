"""Training throughput of the DeepSpeed engine on this machine: samples/s, tokens/s, TFLOP/s, MFU.

    .venv/bin/python benchmarks/train_throughput.py                   # demo model, 32 x 64 grid, p = 8, 4, 2
    .venv/bin/python benchmarks/train_throughput.py --patches 4 --steps 100 --workers 0 1 2

Runs `seqvit.train.engine.train` (one process, as the demo does) on a random 7-channel tokens
store for each patch size and loader worker count, and prints the figures of the last
`metrics.csv` row: samples/s and tokens/s over the logged window, model TFLOP/s (attention's
4 N^2 d per layer counted) and MFU against the measured matmul peak of this CPU, and the
fraction of step time spent waiting for the loader. Then the same with ZeRO stages 1-3 and
bf16, whose throughput on one process shows their overhead. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import build_store  # noqa: E402  (the benchmark next door builds the same kind of store)
from seqvit.train.engine import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(cfg, store, folder: Path, patch: int) -> dict:
    train(cfg, store, folder, patch, progress=False)
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--steps", type=int, default=60, help="steps per run; the last 50 are timed")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    header = f"{'run':<28}{'samples/s':>10}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'loader wait':>13}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for patch in args.patches:
            store, data_cfg = build_store(tmp / f"data{patch}", 32, 64, patch, 200, segments=8, years=(2015, 2016))
            cfg = {**copy.deepcopy(demo), **data_cfg}
            cfg["train"].update(
                steps=args.steps,
                log_every=args.steps - 10,
                val_every=10**6,
                checkpoint_every=10**6,
                warmup_steps=5,
                threads=args.threads,
            )
            print(header)
            variants = [(f"p{patch} fp32 ZeRO-0, {w} workers", {"loader_workers": w}) for w in args.workers]
            variants += [(f"p{patch} fp32 ZeRO-{z}", {"zero_stage": z}) for z in (1, 2, 3)]
            variants += [(f"p{patch} bf16 ZeRO-1", {"zero_stage": 1, "precision": "bf16"})]
            for label, extra in variants:
                run_cfg = copy.deepcopy(cfg)
                run_cfg["train"].update(extra)
                row = run(run_cfg, store, tmp / f"run{patch}-{len(list(tmp.glob('run*')))}", patch)
                print(
                    f"{label:<28}{float(row['samples_per_s']):>10.1f}{float(row['tokens_per_s']):>11.0f}"
                    f"{float(row['tflops']):>9.4f}{float(row['mfu']):>7.1%}{float(row['data_wait']):>13.1%}"
                )


if __name__ == "__main__":
    main()
