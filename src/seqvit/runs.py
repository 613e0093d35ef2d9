"""The settings of one training run of a sweep: the config with its patch size's `parallel.runs` entry.

A sweep trains one run per patch size (tokenize.patch_sizes). `parallel.runs.<P>` may give that
run its own sequence-parallel degree, replicas, gradient accumulation and walltime; this module is
the one place that looks them up, for training, the Slurm job shape, the planner and the methods
text alike.
"""

from __future__ import annotations

from seqvit.errors import SeqvitError

# parallel.runs.<P> keys that override a key of another section for that run
_OVERRIDES = {"sp": "parallel", "dp": "parallel", "grad_accumulation": "train"}


def run_entry(cfg: dict, patch_size: int) -> dict:
    """The parallel.runs entry of this patch size ({} when the config gives none)."""
    runs = (cfg.get("parallel") or {}).get("runs") or {}
    return runs.get(patch_size) or runs.get(str(patch_size)) or {}


def run_config(cfg: dict, patch_size: int) -> dict:
    """The config one run trains with: its parallel.runs entry applied (sp, dp, grad_accumulation)."""
    run = run_entry(cfg, patch_size)
    if not any(key in run for key in _OVERRIDES):
        return cfg
    out = {**cfg, "parallel": {**(cfg.get("parallel") or {})}, "train": {**cfg["train"]}}
    for key, section in _OVERRIDES.items():
        if key in run:
            out[section][key] = run[key]
    return out


def run_parallelism(cfg: dict, patch_size: int) -> tuple[int, int]:
    """(P, D) of the run with this patch size: parallel.runs[p] overrides parallel.sp / .dp."""
    pcfg = cfg.get("parallel") or {}
    run = run_entry(cfg, patch_size)
    sp = int(run.get("sp", pcfg.get("sp", 1)))
    dp = int(run.get("dp", pcfg.get("dp", 1)))
    if sp < 1 or dp < 1:
        raise SeqvitError(f"parallel.runs.{patch_size}: sp and dp must be at least 1 (got sp={sp}, dp={dp})")
    return sp, dp
