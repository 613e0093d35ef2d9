"""Training: AdamW, warmup + cosine, latitude-weighted MSE on the tendency.

One process, or several under torchrun / srun (config section `parallel`): the world of P x D
ranks splits each sample's token sequence over P sequence-parallel ranks (parallel.sp, method
parallel.sp_method) and the global batch over D data-parallel replicas; see
seqvit/parallel/shard.py for how the loss and gradients are reduced. A single process runs the
plain code path, untouched. Only rank 0 writes files.

A run folder holds checkpoint.pt (everything needed to continue bit for bit: model, optimizer,
scheduler, step, random states, metrics so far), metrics.csv (rewritten atomically at every
log step) and, at the end, model.pt. Calling train() again on the same folder resumes from
checkpoint.pt, so a job cut by a walltime limit just runs again.
"""

from __future__ import annotations

import csv
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from seqvit.data.loader import ForecastPairs
from seqvit.data.tokenize import token_weights
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.model.vit import build_model
from seqvit.parallel import groups
from seqvit.parallel.attention import check_backend

METRIC_COLUMNS = ("step", "loss", "val_loss", "lr", "samples_per_s", "elapsed_s")
VAL_SAMPLES = 256
VAL_BATCH = 64
# Train keys that do not change the weights a run produces: a checkpoint may resume across them.
RESUME_FREE_KEYS = ("threads", "val_every", "checkpoint_every", "log_every")


def weighted_mse(pred, target, weights):
    """Latitude-weighted MSE over everything; weights [L, P*P] broadcast over batch and channel."""
    return ((pred - target) ** 2 * weights).mean()


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _write_metrics(path: Path, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@torch.no_grad()
def validation_loss(model, dataset: ForecastPairs, index, weights, shard=None) -> float:
    """Mean loss over `index`; with a shard (sequence parallel) every rank scores its segment."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(index), VAL_BATCH):
        x, lead, y = dataset.batch(index[start : start + VAL_BATCH])
        if shard is None:
            total += weighted_mse(model(x, lead), y - x, weights).item() * len(x)
        else:
            total += shard.sequence_mean(shard.loss(model, x, lead, y, weighted_mse).item()) * len(x)
        count += len(x)
    model.train()
    return total / count


def train(
    cfg: dict, tokens_path, out_dir, patch_size: int, progress: bool = True, stop_at_step: int | None = None
) -> Path | None:
    """Train (or resume) the run in `out_dir`; returns the path of model.pt (None if stopped early).

    stop_at_step: checkpoint and return after this step without writing model.pt (a run split
    over several jobs); the next call resumes.
    """
    tcfg = cfg["train"]
    pcfg = cfg.get("parallel") or {}
    owns_process_group = not torch.distributed.is_initialized()
    # the engine keeps model and batches on the CPU, so its collectives go over gloo (a GPU engine passes nccl)
    layout = groups.init_distributed(int(pcfg.get("sp", 1)), backend="gloo")
    main = layout.is_main
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, metrics_path, model_path = out_dir / "checkpoint.pt", out_dir / "metrics.csv", out_dir / "model.pt"

    torch.set_num_threads(int(tcfg.get("threads", 1)))
    seed = int(tcfg.get("seed", 0))
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)  # batch indices and leads

    lead_hours = tcfg["lead_hours"]
    train_set = ForecastPairs(tokens_path, cfg, "train", lead_hours, random_lead=True, generator=generator)
    val_set = ForecastPairs(tokens_path, cfg, "val", lead_hours, random_lead=False)
    if train_set.patch_size != patch_size:
        raise SeqvitError(
            f"{tokens_path}: store has patch size {train_set.patch_size}, training asked for {patch_size}"
        )
    val_index = np.unique(np.linspace(0, len(val_set) - 1, min(VAL_SAMPLES, len(val_set))).round().astype(int))
    weights = torch.from_numpy(token_weights(train_set.latitude, train_set.grid_shape, patch_size))

    model = build_model(cfg["model"], len(train_set.channels), patch_size, train_set.grid_shape)
    check_backend(cfg["model"].get("attention", "sdpa"))
    shard = _shard(cfg, layout, model, weights) if layout.distributed else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg.get("weight_decay", 0.0)), betas=(0.9, 0.95)
    )
    total_steps = int(tcfg["steps"])
    warmup = int(tcfg.get("warmup_steps", 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps))
    batch_size = int(tcfg["batch_size"])
    val_every = int(tcfg.get("val_every", 0)) or total_steps
    checkpoint_every = int(tcfg.get("checkpoint_every", 0)) or total_steps
    log_every = max(1, int(tcfg.get("log_every", 10)))

    signature = {
        "model": dict(cfg["model"]),
        "train": {key: value for key, value in tcfg.items() if key not in RESUME_FREE_KEYS},
        "patch_size": patch_size,
        "channels": train_set.channels,
    }
    step, rows, elapsed_before = 0, [], 0.0
    window = {"loss": 0.0, "steps": 0, "samples": 0, "seconds": 0.0}
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        if state.get("signature") != signature:
            raise SeqvitError(
                f"{checkpoint_path}: written by a run with other settings ({state.get('signature')}), not "
                f"{signature}; delete it to start afresh or restore the config it was trained with"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, rows, elapsed_before, window = state["step"], state["metrics"], state["elapsed_s"], state["window"]
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["generator"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        if main:
            _write_metrics(metrics_path, rows)  # drop rows logged after the checkpoint by a killed run

    def checkpoint():
        if not main:
            return
        _save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "signature": signature,
                "step": step,
                "metrics": rows,
                "elapsed_s": elapsed_before + (time.perf_counter() - started),
                "window": dict(window),
                "torch_rng": torch.get_rng_state(),
                "generator": generator.get_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
            },
            checkpoint_path,
        )

    last_step = total_steps if stop_at_step is None else min(total_steps, int(stop_at_step))
    started = time.perf_counter()
    bar = tqdm(
        total=total_steps, initial=step, disable=not (progress and main), desc=f"train p{patch_size}", unit="step"
    )
    model.train()
    while step < last_step:
        tick = time.perf_counter()
        index = torch.randint(len(train_set), (batch_size,), generator=generator)
        x, lead, y = train_set.batch(index)
        if shard is None:
            loss = weighted_mse(model(x, lead), y - x, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = loss.item()
        else:  # every rank drew the same global batch: this replica's samples, this rank's tokens
            loss = shard.loss(model, *shard.samples(x, lead, y), weighted_mse)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = shard.average_gradients(model.parameters(), loss)
        optimizer.step()
        scheduler.step()
        step += 1
        window["loss"] += loss_value
        window["steps"] += 1
        window["samples"] += batch_size
        window["seconds"] += time.perf_counter() - tick

        is_val = step % val_every == 0 or step == total_steps
        if step % log_every == 0 or is_val:
            val_loss = validation_loss(model, val_set, val_index, weights, shard) if is_val else ""
            rate = window["samples"] / max(window["seconds"], 1e-9)
            rows.append(
                {
                    "step": step,
                    "loss": window["loss"] / window["steps"],
                    "val_loss": val_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "samples_per_s": rate,
                    "elapsed_s": elapsed_before + (time.perf_counter() - started),
                }
            )
            if main:
                _write_metrics(metrics_path, rows)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", samples_s=f"{rate:.0f}")
            window = {"loss": 0.0, "steps": 0, "samples": 0, "seconds": 0.0}
        if step % checkpoint_every == 0 or step == last_step:
            checkpoint()
        bar.update(1)
    bar.close()

    if step < total_steps:
        _finish(layout, owns_process_group)
        return None
    if not main:
        _finish(layout, owns_process_group)
        return model_path
    _save(
        {
            "state_dict": model.state_dict(),
            "model_config": dict(cfg["model"]),
            "channels": train_set.channels,
            "patch_size": patch_size,
            "grid_shape": list(train_set.grid_shape),
            "latitude": train_set.latitude.tolist(),
            "longitude": train_set.longitude.tolist(),
            "lead_hours": [int(h) for h in lead_hours],
            "steps": step,
        },
        model_path,
    )
    _finish(layout, owns_process_group)
    return model_path


def _shard(cfg: dict, layout, model, weights):
    """Check the parallel layout, put the sequence-parallel attention in the model, sync the weights."""
    from seqvit.parallel.sequence import sequence_parallel_attention
    from seqvit.parallel.shard import Shard

    pcfg = cfg.get("parallel") or {}
    method, uneven = pcfg.get("sp_method", "ulysses"), pcfg.get("uneven", "error")
    batch_size = int(cfg["train"]["batch_size"])
    groups.check_layout(
        num_tokens=model.num_tokens, num_heads=int(cfg["model"]["num_heads"]), sp=layout.sp, method=method,
        world_size=layout.world_size, batch_size=batch_size, uneven=uneven,
    )  # fmt: skip
    if layout.sp > 1:
        kernel = cfg["model"].get("attention", "sdpa")
        backend = sequence_parallel_attention(
            method, layout.sp_group, model.num_tokens, int(cfg["model"]["num_heads"]), kernel, uneven
        )
        model.set_attention_backend(backend)
    shard = Shard.of(layout, model.num_tokens, batch_size, weights)
    shard.broadcast_parameters(model)
    return shard


def _finish(layout, owns_process_group: bool) -> None:
    """Wait for rank 0's files; close the process group if train() opened it."""
    if layout.distributed:
        torch.distributed.barrier()
        if owns_process_group:
            torch.distributed.destroy_process_group()
