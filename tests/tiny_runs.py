"""A tiny tokens store and training config, and torchrun worlds that train on it (tests of parallel training)."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from conftest import write_regridded
from seqvit.config import validate
from seqvit.data.tokenize import tokenize
from seqvit.parallel.spawn import free_port

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, P = 8, 16, 4  # 2 x 4 patches: 8 tokens


def config(results: Path, **train) -> dict:
    """The demo config cut down to a 2-layer model of 8 tokens and 2 heads, schema defaults filled in."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = str(results)
    cfg["data"].update(years=[2015, 2016, 2017], single_level=["t2m"], pressure_level=["t"], levels=[850])
    cfg["splits"] = {"train": [2015], "val": [2016], "test": [2017]}
    cfg["tokenize"]["patch_sizes"] = [P]
    cfg["parallel"] = {}  # one process unless a test asks for more (not the demo's per-run layout)
    cfg["model"] = {"embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0}
    cfg["train"].update(
        lead_hours=[6, 24],
        batch_size=4,
        steps=8,
        lr=0.003,
        weight_decay=0.01,
        warmup_steps=2,
        val_every=4,
        checkpoint_every=4,
        log_every=1,
        threads=1,
        seed=0,
        loader_workers=0,
    )
    cfg["train"].update(train)
    cfg["evaluate"] = {"variables": ["t2m"], "lead_hours": [6, 24], "baselines": ["persistence"]}
    return validate(cfg)


def variant(cfg: dict, parallel: dict | None = None, model: dict | None = None, **train) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["parallel"] = {**(cfg.get("parallel") or {}), **(parallel or {})}
    cfg["model"].update(model or {})
    cfg["train"].update(train)
    return cfg


def tokens_store(root: Path, cfg: dict) -> Path:
    """A drifting, warming wave over 3 short years, tokenized with patch size P."""
    paths, stats = write_regridded(root, cfg, (2015, 2016, 2017), height=HEIGHT, width=WIDTH, trend=True)
    tokens = root / f"p{P}.zarr"
    tokenize(cfg, paths, stats, P, tokens)
    return tokens


def torchrun(world: int, tokens: Path, runs: list[dict], record: str, spec: Path) -> None:
    """tests/recorded_runs.py in one torchrun world of `world` processes; runs: [{"cfg", "out", ...}]."""
    spec.write_text(json.dumps({"tokens": str(tokens), "patch_size": P, "record": record, "runs": runs}))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(world),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(ROOT / "tests" / "recorded_runs.py"),
        str(spec),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-6000:]


def losses(run: Path, key: str = "loss") -> np.ndarray:
    """The `key` column of a run's metrics.csv, rows that have it."""
    with open(run / "metrics.csv") as handle:
        return np.array([float(row[key]) for row in csv.DictReader(handle) if row[key] != ""])
