"""Training on the DeepSpeed engine: AdamW, warmup + cosine, latitude-weighted MSE on the tendency.

One process, or P x D processes under torchrun / srun (config section `parallel`): the world
splits each sample's token sequence over P sequence-parallel ranks (parallel.sp, method
parallel.sp_method) and the global batch over D data-parallel replicas. Each rank's loader
reads only its replica's samples and its token segment (data/loader.py); the loss of a rank is
that of its segment with the global latitude weights (parallel/step_share.py), so the mean of the
per-rank losses over the world is the loss of the whole global batch. DeepSpeed is given no
model-parallel unit: it averages gradients over the whole world, which is exactly the gradient
of that mean, and ZeRO (train.zero_stage 0-3) partitions optimizer states, gradients and
parameters over the sequence and data ranks together.

A run folder holds checkpoints/ (train/checkpoint.py; a run resumes from it bit for bit, also
after SIGTERM/SIGUSR1 from Slurm), metrics.csv (rewritten atomically at every log step),
tensorboard/ when TensorBoard is installed, best.pt (weights of the lowest validation loss) and,
at the end, model.pt (the last weights). Only rank 0 writes files other than checkpoint parts.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from seqvit import lineage
from seqvit.data.loader import SampleOrder, SegmentBatches, SplitIndex, read_pairs, step_loader
from seqvit.data.token_store import TokenStore
from seqvit.data.tokenize import store_identity, token_weights
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.model.attention import check_backend
from seqvit.model.vit import build_model
from seqvit.parallel import groups
from seqvit.parallel.step_share import StepShare
from seqvit.provenance.code import stage_hash
from seqvit.runs import run_config, run_parallelism
from seqvit.train import throughput
from seqvit.train.checkpoint import Checkpoints, StopRequest, TrainingInterrupted

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "step",
    "loss",
    "val_loss",
    "lr",
    "samples_per_s",
    "tokens_per_s",
    "tflops",
    "mfu",
    "data_wait",
    "elapsed_s",
)
VAL_SAMPLES = 256
VAL_BATCH = 64
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run_settings(cfg: dict, tokens_path, patch_size: int, channels, layout) -> dict:
    """What a checkpoint must have been written with to be resumed: every setting that shapes the
    weights, and the identity of the tokens store (its lineage and id, so a store rewritten since,
    even with equal settings, starts training afresh)."""
    made_by, store_id = store_identity(tokens_path)
    lineage.check(tokens_path, made_by, lineage.tokens(cfg, patch_size), "tokens store")
    return {
        "model": dict(cfg["model"]),
        "train": {key: value for key, value in cfg["train"].items() if key not in lineage.TRAIN_REPORTING_KEYS},
        "validation_years": sorted(int(y) for y in cfg["splits"]["val"]),
        "patch_size": patch_size,
        "channels": channels,
        "world_size": layout.world_size,
        "sp": layout.sp,
        "tokens": {"lineage": made_by, "store_id": store_id},
        # the code that trains: after an edit (the workflow retrains then) a checkpoint of the old
        # code is not resumed; it may not even load (other parameter groups, other modules)
        "code": stage_hash("train.engine", "train.slurm"),
    }


def weighted_mse(pred, target, weights):
    """Latitude-weighted MSE over everything; weights [L, P*P] broadcast over batch and channel."""
    return ((pred - target) ** 2 * weights).mean()


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def deepspeed_config(tcfg: dict, local_batch: int) -> dict:
    """The DeepSpeed config of section `train` for a replica batch of `local_batch` samples."""
    accumulation = int(tcfg.get("grad_accumulation", 1))
    if accumulation < 1 or local_batch % accumulation:
        raise SeqvitError(
            f"config key train.grad_accumulation: {accumulation} must be at least 1 and divide the {local_batch} "
            f"samples each data-parallel replica gets per step (train.batch_size / data-parallel replicas)"
        )
    stage = int(tcfg.get("zero_stage", 0))
    if stage not in (0, 1, 2, 3):
        raise SeqvitError(f"config key train.zero_stage: {stage} is not one of 0, 1, 2, 3")
    precision = tcfg.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise SeqvitError(f"config key train.precision: {precision!r} is not one of {sorted(PRECISIONS)}")
    config = {
        "train_micro_batch_size_per_gpu": local_batch // accumulation,
        "gradient_accumulation_steps": accumulation,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch's AdamW: the same update on every ZeRO stage
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    clip = float(tcfg.get("grad_clip", 0.0) or 0.0)
    if clip > 0:
        config["gradient_clipping"] = clip
    return config


def _write_metrics(path: Path, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _start_process_group(sp: int, device_type: str) -> tuple[groups.ProcessGrid, bool, dict]:
    """This process's place in the world; a one-process group when there is no launcher (DeepSpeed needs one).

    Also returns the launcher variables set for DeepSpeed (it looks for them and otherwise tries
    MPI discovery; srun sets SLURM_* only), to be removed again when training ends: they must not
    leak into processes started later by this one (a test that then runs srun).
    """
    owns = not dist.is_initialized()
    layout = groups.init_distributed(sp, device_type)
    if not dist.is_initialized():  # one process: an in-memory store, no port to collide with other runs
        dist.init_process_group(groups.backend_for(device_type), store=dist.HashStore(), rank=0, world_size=1)
    info = groups.launcher_env()
    wanted = {
        "RANK": dist.get_rank(),
        "WORLD_SIZE": dist.get_world_size(),
        "LOCAL_RANK": info["local_rank"],
        "MASTER_ADDR": info["master_addr"] or "127.0.0.1",
        "MASTER_PORT": info["master_port"] or groups.DEFAULT_PORT,
    }
    added = {key: str(value) for key, value in wanted.items() if key not in os.environ}
    os.environ.update(added)
    return layout, owns, added


def _device_type(tcfg: dict) -> str:
    """cpu or cuda (config key train.device); which GPU is the launcher's business (groups.init_distributed)."""
    wanted = tcfg.get("device", "auto")
    if wanted not in ("auto", "cpu", "cuda"):
        raise SeqvitError(f"config key train.device: {wanted!r} is not one of auto, cpu, cuda")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise SeqvitError("config key train.device: cuda asked for, but torch sees no GPU; use auto or cpu")
    return "cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu"


def _import_deepspeed(device_type: str):
    import deepspeed
    import deepspeed.ops

    if device_type == "cpu":
        # DeepSpeed's CPU backend would JIT-compile a shared-memory all-reduce used only for inference;
        # gloo carries every collective of training.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def _full_state_dict(engine, zero_stage: int) -> dict:
    """The whole model's weights in fp32 on every rank (gathered from the ZeRO-3 partitions)."""
    module = engine.module
    gathered = contextlib.nullcontext()
    if zero_stage == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gathered:
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


class _TensorBoard:
    """Scalars to <run>/tensorboard when TensorBoard is installed; nothing otherwise."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: metrics.csv has the same numbers
                return
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and value != "" and value is not None:
                self.writer.add_scalar(f"train/{key}", float(value), int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(
    cfg: dict,
    tokens_path,
    out_dir,
    patch_size: int,
    progress: bool = True,
    stop_at_step: int | None = None,
    restart_if_changed: bool = False,
) -> Path | None:
    """Train (or resume) the run in `out_dir`; returns the path of model.pt (None if stopped early).

    restart_if_changed: checkpoints written with other settings are moved to checkpoints.previous/
    and training starts afresh (otherwise they are refused).

    stop_at_step: checkpoint and return after this step without writing model.pt (a run split
    over several jobs); the next call resumes. A SIGTERM or SIGUSR1 does the same and raises
    TrainingInterrupted.
    """
    cfg = run_config(cfg, patch_size)  # this run's parallel.runs entry (sp, dp, grad_accumulation)
    tcfg = cfg["train"]
    device_type = _device_type(tcfg)
    deepspeed = _import_deepspeed(device_type)
    sp, _ = run_parallelism(cfg, patch_size)
    if sp > 1 and cfg["model"].get("attention_pattern") == "window":
        # A rank's segment is a band of token rows, but shifted windows straddle the bands (and
        # the sequence-parallel methods exchange whole sequences, not windows): not supported yet.
        raise SeqvitError(
            f"config key model.attention_pattern: window runs in one process per sample, but patch size {patch_size} "
            f"has parallel.sp={sp}; set parallel.sp: 1 (also in parallel.runs) or model.attention_pattern: full"
        )
    layout, owns_process_group, added_variables = _start_process_group(sp, device_type)
    try:
        with StopRequest() as stop:
            result = _train(
                cfg,
                tokens_path,
                Path(out_dir),
                patch_size,
                progress,
                stop_at_step,
                layout,
                deepspeed,
                stop,
                restart_if_changed,
            )
        if layout.distributed:  # rank 0 has written model.pt before any rank reports done
            dist.barrier()
        return result
    finally:
        for key in added_variables:
            os.environ.pop(key, None)
        if owns_process_group:
            dist.destroy_process_group()
            # DeepSpeed caches a clone of the world group; the next run in this process opens a new world
            deepspeed.utils.groups._WORLD_GROUP = None


def _train(cfg, tokens_path, out_dir, patch_size, progress, stop_at_step, layout, deepspeed, stop, restart_if_changed):
    trainer = _Trainer(cfg, tokens_path, out_dir, patch_size, layout, deepspeed, restart_if_changed)
    return trainer.run(progress, stop_at_step, stop)


def _new_window() -> dict:
    """What the next metrics row averages: the steps since the last row."""
    return {"loss": 0.0, "steps": 0, "samples": 0, "seconds": 0.0, "wait": 0.0}


class _Trainer:
    """One training run on this rank: setup (data, model, DeepSpeed engine, checkpoints), the step,
    validation, the metrics rows and the checkpoints; run() is the loop."""

    def __init__(self, cfg, tokens_path, out_dir, patch_size, layout, deepspeed, restart_if_changed):
        self.cfg, self.tcfg, self.layout, self.patch_size = cfg, cfg["train"], layout, patch_size
        self._deepspeed = deepspeed
        tcfg = self.tcfg
        self.device = layout.device  # of the model, the batches and every tensor handed to a collective
        self.main = layout.is_main
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.metrics_path, self.model_path, self.best_path = (
            out_dir / "metrics.csv",
            out_dir / "model.pt",
            out_dir / "best.pt",
        )

        # the machine's threads are shared by the ranks on it (torchrun on one machine, srun on a node)
        local_ranks = int(groups.launcher_env()["local_world_size"])
        torch.set_num_threads(max(1, int(tcfg["threads"]) // local_ranks))
        seed = int(tcfg.get("seed", 0))
        torch.manual_seed(seed)  # the same stream on every rank until the model is built: the same initial weights
        random.seed(seed)
        np.random.seed(seed)

        self._setup_data(tokens_path, seed)
        self._setup_model(seed)
        self._setup_engine()

        self.settings = run_settings(cfg, tokens_path, patch_size, self.channels, layout)
        self.checkpoints = Checkpoints(
            out_dir, layout.rank, layout.distributed, keep=int(tcfg.get("keep_checkpoints", 2))
        )
        self.checkpoints.check_settings(self.settings, set_aside=restart_if_changed)
        self.step, self.rows, self.elapsed_before, self.best = 0, [], 0.0, math.inf
        self.window = _new_window()
        state, rank_state = self.checkpoints.load(self.engine)
        if state is not None:
            self.step, self.rows = state["step"], state["metrics"]
            self.elapsed_before, self.best = state["elapsed_s"], state["best_val_loss"]
            self.window = rank_state["window"]  # steps since the last metrics row: the next row averages them too
            if self.main:
                _write_metrics(self.metrics_path, self.rows)  # drop rows logged after the checkpoint by a killed run
                log.info(
                    "resumed from step %d, checkpoint %s", self.step, self.checkpoints.dir / self.checkpoints.latest_tag
                )

        self.flops_per_sample = throughput.model_flops_per_sample(
            cfg["model"], len(self.channels), patch_size, self.model.num_tokens, token_grid=self.model.token_grid
        )
        self.peak, self.peak_source = throughput.peak_tflops(tcfg, self.device, tcfg.get("precision", "fp32"))
        self.total_steps = int(tcfg["steps"])
        self.val_every = int(tcfg.get("val_every", 0)) or self.total_steps
        self.checkpoint_every = int(tcfg.get("checkpoint_every", 0)) or self.total_steps
        self.log_every = max(1, int(tcfg.get("log_every", 10)))

    # ------------------------------------------------------------------ setup

    def _setup_data(self, tokens_path, seed: int) -> None:
        self.lead_hours = [int(h) for h in self.tcfg["lead_hours"]]
        self.train_index = SplitIndex(tokens_path, self.cfg, "train", self.lead_hours)
        self.val_index = SplitIndex(tokens_path, self.cfg, "val", self.lead_hours)
        if self.train_index.patch_size != self.patch_size:
            raise SeqvitError(
                f"{tokens_path}: store has patch size {self.train_index.patch_size}, training asked for {self.patch_size}"
            )
        self.channels = list(self.train_index.channels)
        self.batch_size = int(self.tcfg["batch_size"])
        self.order = SampleOrder(len(self.train_index), len(self.lead_hours), self.batch_size, seed)
        self.store = TokenStore(tokens_path)
        n_val = len(self.val_index) * len(self.lead_hours)  # every (lead, init time) pair, leads outermost
        val_items = np.unique(np.linspace(0, n_val - 1, min(VAL_SAMPLES, n_val)).round().astype(int))
        self.val_items = np.array_split(val_items, self.layout.dp)[self.layout.dp_rank]  # disjoint per replica

    def _setup_model(self, seed: int) -> None:
        cfg, layout = self.cfg, self.layout
        model = build_model(cfg["model"], len(self.channels), self.patch_size, self.train_index.grid_shape)
        # From here each rank draws from its own stream (torch's CPU and GPU generators): the dropout
        # masks of its samples and token segment, independent of the other ranks' (the data order has
        # its own generator, data/loader.SampleOrder). Checkpoints keep every rank's state.
        torch.manual_seed(groups.rank_seed(seed, layout))
        check_backend(cfg["model"].get("attention", "sdpa"))
        model.activation_checkpointing = bool(self.tcfg.get("activation_checkpointing", False))
        weights = torch.from_numpy(
            token_weights(self.train_index.latitude, self.train_index.grid_shape, self.patch_size)
        )
        if layout.distributed:
            _sequence_parallel(cfg, layout, model, self.patch_size)
        self.model = model
        self.shard = StepShare.of(layout, model.num_tokens, self.batch_size, weights)
        self.segment = (self.shard.start, self.shard.stop)
        self.batches = SegmentBatches(self.store, self.train_index, self.order, layout.dp, layout.dp_rank, self.segment)

    def _setup_engine(self) -> None:
        tcfg = self.tcfg
        total_steps, warmup = int(tcfg["steps"]), int(tcfg.get("warmup_steps", 0))
        optimizer = torch.optim.AdamW(
            self.model.weight_decay_groups(float(tcfg["weight_decay"])), lr=float(tcfg["lr"]), betas=(0.9, 0.95)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps))
        ds_config = deepspeed_config(tcfg, self.shard.local_batch)
        # device_rank: the GPU this rank was given (groups.init_distributed), which is not LOCAL_RANK, the
        # one DeepSpeed would pick, when the launcher shows each process only its own GPU (srun --gpus-per-task)
        self.engine, _, _, _ = self._deepspeed.initialize(
            args=types.SimpleNamespace(device_rank=self.device.index or 0),
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
        )
        if torch.device(self.engine.device) != self.device:  # its gradient all-reduce must run where ours do
            raise SeqvitError(
                f"DeepSpeed placed the model on {self.engine.device}, not on this rank's device {self.device}"
            )
        self.zero_stage = ds_config["zero_optimization"]["stage"]
        self.dtype = PRECISIONS[tcfg.get("precision", "fp32")]
        self.accumulation = ds_config["gradient_accumulation_steps"]
        self.shard_weights = self.shard.weights.to(self.device)

    # ------------------------------------------------------------------ step and validation

    def segment_loss(self, x, lead, y):
        device = self.device
        pred = self.engine(x.to(device, self.dtype), lead.to(device), token_offset=self.shard.start).float()
        x, y = x.to(device), y.to(device)
        return self.shard.scaled(weighted_mse(pred, y - x, self.shard_weights))

    def train_step(self, x, lead, y) -> float:
        """One optimizer step over the batch (in micro-batches); the mean of their losses."""
        loss_sum = 0.0
        for chunk in zip(*(t.chunk(self.accumulation) for t in (x, lead, y))):
            loss = self.segment_loss(*chunk)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.item()
        return loss_sum / self.accumulation

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.engine.eval()
        total, count = 0.0, 0
        items_all, index = self.val_items, self.val_index
        for start in range(0, len(items_all), VAL_BATCH):
            items = items_all[start : start + VAL_BATCH]
            x, lead, y = read_pairs(self.store, index, items % len(index), items // len(index), self.segment)
            total += self.segment_loss(x, lead, y).item() * len(items)
            count += len(items)
        self.engine.train()
        local = torch.tensor([total, count], dtype=torch.float64, device=self.device)
        if self.layout.distributed:  # each sample's P segment losses average to its loss
            dist.all_reduce(local)
        return float(local[0] / local[1])

    # ------------------------------------------------------------------ metrics and checkpoints

    def log_row(self, is_val: bool, bar, tensorboard) -> None:
        """Average the window into a metrics row (the global batch's loss; validation when due)."""
        window, layout = self.window, self.layout
        mean_loss = window["loss"] / window["steps"]
        if layout.distributed:  # per-rank losses average to the loss of the global batch
            buf = torch.tensor([mean_loss], dtype=torch.float64, device=self.device)
            dist.all_reduce(buf)
            mean_loss = float(buf) / layout.world_size
        val_loss = self.validation_loss() if is_val else ""
        seconds = window["seconds"] + window["wait"]
        rate = throughput.Throughput.of(
            window["samples"], seconds, layout.world_size, self.model.num_tokens, self.flops_per_sample, self.peak
        )
        self.rows.append(
            {
                "step": self.step,
                "loss": mean_loss,
                "val_loss": val_loss,
                "lr": self.engine.get_lr()[0],
                "samples_per_s": rate.samples_per_s,
                "tokens_per_s": rate.tokens_per_s,
                "tflops": rate.tflops_per_device,
                "mfu": rate.mfu,
                "data_wait": window["wait"] / max(seconds, 1e-9),
                "elapsed_s": self.elapsed_before + (time.perf_counter() - self.started),
            }
        )
        if self.main:
            _write_metrics(self.metrics_path, self.rows)
            tensorboard.log(self.rows[-1])
        bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{rate.tokens_per_s:,.0f}", mfu=f"{rate.mfu:.0%}")
        if val_loss != "" and val_loss < self.best:
            self.best = val_loss
            self.save_weights(self.best_path)
        self.window = _new_window()

    def save_checkpoint(self) -> None:
        client = {
            "step": self.step,
            "metrics": self.rows,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.started,
            "best_val_loss": self.best,
        }
        self.checkpoints.save(self.engine, self.step, client, self.settings, rank_state={"window": dict(self.window)})

    def save_weights(self, path) -> None:
        weights_now = _full_state_dict(self.engine, self.zero_stage)
        if self.main:
            _save(
                {
                    "state_dict": weights_now,
                    "model_config": dict(self.cfg["model"]),
                    "channels": self.channels,
                    "patch_size": self.patch_size,
                    "grid_shape": list(self.train_index.grid_shape),
                    "latitude": self.train_index.latitude.tolist(),
                    "longitude": self.train_index.longitude.tolist(),
                    "lead_hours": self.lead_hours,
                    "steps": self.step,
                    "precision": self.tcfg.get("precision", "fp32"),
                    "tokens": self.settings["tokens"],
                },
                path,
            )

    # ------------------------------------------------------------------ the loop

    def run(self, progress: bool, stop_at_step, stop) -> Path | None:
        total_steps = self.total_steps
        last_step = total_steps if stop_at_step is None else min(total_steps, int(stop_at_step))
        self.started = time.perf_counter()
        tensorboard = _TensorBoard(self.out_dir, self.main)
        bar = tqdm(
            total=total_steps,
            initial=self.step,
            disable=not (progress and self.main),
            desc=f"train p{self.patch_size}",
            unit="step",
        )
        self.engine.train()
        workers = int(self.tcfg.get("loader_workers", 1))
        loader = step_loader(self.batches, self.step, last_step, workers=workers) if self.step < last_step else ()
        batches_iter = iter(loader)
        try:
            tick = time.perf_counter()
            while self.step < last_step:
                x, lead, y = next(batches_iter)
                fetched = time.perf_counter()
                self.window["wait"] += fetched - tick
                loss = self.train_step(x, lead, y)
                self.step += 1
                self.window["loss"] += loss
                self.window["steps"] += 1
                self.window["samples"] += self.batch_size
                self.window["seconds"] += time.perf_counter() - fetched
                interrupted = stop.pending(self.layout.distributed, self.device)
                is_val = self.step % self.val_every == 0 or self.step == total_steps
                if self.step % self.log_every == 0 or is_val:
                    self.log_row(is_val, bar, tensorboard)
                if interrupted or self.step % self.checkpoint_every == 0 or self.step == last_step:
                    self.save_checkpoint()
                bar.update(1)
                tick = time.perf_counter()
                if interrupted:
                    raise TrainingInterrupted(
                        f"stopped by {stop.name} after step {self.step} of {total_steps}; checkpoint "
                        f"{self.checkpoints.dir / self.checkpoints.latest_tag} written; run the same command again to resume"
                    )
        finally:  # also on an error: the loader's workers ignore SIGTERM and would keep the process from exiting
            if hasattr(loader, "close"):
                loader.close()
            bar.close()
            tensorboard.close()
        self._log_throughput()
        if self.step < total_steps:
            return None
        self.save_weights(self.model_path)
        return self.model_path

    def _log_throughput(self) -> None:
        if self.main and self.rows:
            last = self.rows[-1]
            log.info(
                "step %d: %.0f samples/s, %.0f tokens/s, %.3g TFLOP/s per device, MFU %.1f%% of %.3g TFLOP/s (%s)",
                last["step"],
                last["samples_per_s"],
                last["tokens_per_s"],
                last["tflops"],
                100 * last["mfu"],
                self.peak,
                self.peak_source,
            )


def _sequence_parallel(cfg: dict, layout, model, patch_size: int) -> None:
    """Check the parallel layout and put the sequence-parallel attention in the model."""
    from seqvit.parallel.methods import sequence_parallel_attention

    pcfg = cfg.get("parallel") or {}
    method, uneven = pcfg.get("sp_method", "ulysses"), pcfg.get("uneven", "error")
    dp = pcfg.get("dp")  # this run's (train() applied its parallel.runs entry)
    if dp is not None and int(dp) != layout.dp:
        raise SeqvitError(
            f"config key parallel.dp: {dp} data-parallel replicas asked for, but {layout.world_size} processes with "
            f"parallel.sp={layout.sp} make {layout.dp}; launch {layout.sp * int(dp)} processes or change parallel.dp"
        )
    groups.check_layout(
        num_tokens=model.num_tokens,
        num_heads=int(cfg["model"]["num_heads"]),
        sp=layout.sp,
        method=method,
        world_size=layout.world_size,
        batch_size=int(cfg["train"]["batch_size"]),
        uneven=uneven,
        sp_inner=int(pcfg.get("sp_inner", 1)),
    )
    if layout.sp > 1:
        kernel = cfg["model"].get("attention", "sdpa")
        backend = sequence_parallel_attention(
            method,
            layout.sp_group,
            model.num_tokens,
            int(cfg["model"]["num_heads"]),
            kernel,
            uneven,
            int(pcfg.get("sp_inner", 1)),  # two-level: the factory builds the inner/outer groups (every rank)
        )
        model.set_attention_backend(backend)
