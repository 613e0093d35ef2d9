"""Forecasts of a trained ViT on the test split, in physical units (contract format 7).

One process, or sp x dp processes under torchrun / srun, as training lays them out (the run's
parallel.runs entry, or --sp): each sequence-parallel rank reads and runs only its token segment
(the attention exchanges the rest, parallel/methods.py), and the dp replicas split each chunk's
init times. The test period is forecast in chunks of evaluate.predict_chunk init times: rank 0
gathers a chunk's segments and writes it into the netCDF file, which is a temporary until the
last chunk is in (seqvit.io.atomic_path), so memory follows the chunk, not the test period,
and an interrupted prediction leaves no forecast file. The weights do not depend on sp, so any
layout gives the one-process forecast (to rounding).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import xarray as xr

from seqvit import lineage
from seqvit.config import load_schema
from seqvit.data.loader import SplitIndex
from seqvit.data.stats import channel_stats
from seqvit.data.token_store import TokenStore
from seqvit.data.tokenize import store_identity, unpatchify
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.model.vit import build_model
from seqvit.parallel import groups
from seqvit.runs import run_config, run_parallelism

PREDICTION_DIMS = ("lead_hours", "time", "channel", "latitude", "longitude")  # evaluate/report.py reads these
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
log = logging.getLogger(__name__)


def load_model(run_dir):
    """(model in eval mode, saved metadata) from run_dir/model.pt."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise SeqvitError(f"{path}: no trained model; run `seqvit train` for this patch size first")
    saved = torch.load(path, weights_only=False)
    model = build_model(saved["model_config"], len(saved["channels"]), saved["patch_size"], saved["grid_shape"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def check_trained_on(cfg: dict, run_dir, tokens_path, saved: dict) -> None:
    """Refuse a model trained on another tokens store than the one it is to forecast from."""
    made_by, store_id = store_identity(tokens_path)
    lineage.check(tokens_path, made_by, lineage.tokens(cfg, int(saved["patch_size"])), "tokens store")
    trained_on = (saved.get("tokens") or {}).get("store_id")
    if trained_on != store_id:
        raise SeqvitError(
            f"{Path(run_dir) / 'model.pt'}: trained on another tokens store than {tokens_path} (store id {trained_on} "
            f"then, {store_id} now: the store was rewritten after training); retrain it (seqvit train, or let "
            "snakemake rerun the train job)"
        )


def _check_leads(cfg: dict, run_dir, saved: dict, lead_hours: list[int]) -> list[int]:
    """The leads of lead_hours the model was not trained on; an error unless evaluate.extrapolate_leads."""
    trained = saved.get("lead_hours")
    if trained is None:  # a model.pt that does not record them: nothing to compare with
        log.warning("%s: does not record its training lead times; lead times not checked", Path(run_dir) / "model.pt")
        return []
    trained = [int(h) for h in trained]
    untrained = [h for h in lead_hours if h not in trained]
    if not untrained:
        return []
    if not (cfg.get("evaluate") or {}).get("extrapolate_leads", False):
        raise SeqvitError(
            f"{Path(run_dir) / 'model.pt'}: trained on lead times {trained} h, not {untrained} h (config key "
            "evaluate.lead_hours); add them to train.lead_hours and retrain, remove them from evaluate.lead_hours, "
            "or set evaluate.extrapolate_leads: true to forecast them anyway"
        )
    log.warning(
        "%s: trained on lead times %s h; forecasting %s h by extrapolation (evaluate.extrapolate_leads)",
        Path(run_dir) / "model.pt",
        trained,
        untrained,
    )
    return untrained


class PredictionInterrupted(SeqvitError):
    """SIGTERM during a prediction: raised so that the temporary forecast file is removed."""


@contextlib.contextmanager
def _term_raises():
    """SIGTERM (Slurm's end of a job, torchrun stopping its workers) raises instead of ending the process
    on the spot, so atomic_path removes the partial file; outside the main thread the default stays."""

    def handle(signum, frame):
        raise PredictionInterrupted(f"prediction stopped by {signal.Signals(signum).name}; no forecast file written")

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _device_type(cfg: dict) -> str:
    """cpu or cuda, as training chooses it (config key train.device)."""
    wanted = cfg["train"].get("device", "auto")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise SeqvitError("config key train.device: cuda asked for, but torch sees no GPU; use auto or cpu")
    return "cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu"


def prediction_sp(cfg: dict, patch_size: int, world_size: int, sp: int | None = None) -> int:
    """The sequence-parallel degree of a prediction: `sp` if given, else the training run's
    (parallel.runs / parallel.sp); one process predicts alone whatever the run trained with."""
    if sp is not None:
        if sp < 1:
            raise SeqvitError(f"seqvit predict --sp {sp}: use a positive number of ranks per sample")
        return int(sp)
    return 1 if world_size == 1 else run_parallelism(cfg, patch_size)[0]


def _start(cfg: dict, model, patch_size: int, sp: int | None) -> tuple[groups.ProcessGrid, bool]:
    """This process's layout (process group and device, as in training) and whether it made the group."""
    world = groups.launcher_env()["world_size"]
    sp = prediction_sp(cfg, patch_size, world, sp)
    pcfg = cfg.get("parallel") or {}
    method, uneven = pcfg.get("sp_method", "ulysses"), pcfg.get("uneven", "error")
    sp_inner = int(pcfg.get("sp_inner", 1)) if sp > 1 else 1
    groups.check_layout(
        num_tokens=model.num_tokens,
        num_heads=int(cfg["model"]["num_heads"]),
        sp=sp,
        method=method,
        world_size=world,
        uneven=uneven,
        sp_inner=sp_inner,
    )
    owns = not dist.is_initialized()
    layout = groups.init_distributed(sp, _device_type(cfg))
    if layout.sp > 1:
        from seqvit.parallel.methods import sequence_parallel_attention

        kernel = cfg["model"].get("attention", "sdpa")
        heads = int(cfg["model"]["num_heads"])
        model.set_attention_backend(
            sequence_parallel_attention(method, layout.sp_group, model.num_tokens, heads, kernel, uneven, sp_inner)
        )
    return layout, owns and dist.is_initialized()


def _skeleton(cfg, patch_size, lead_hours, index, variables, extrapolated) -> xr.Dataset:
    """Coordinates and attributes of the forecast file, without the forecast itself."""
    ds = xr.Dataset(
        coords={
            "lead_hours": np.array(lead_hours, dtype=np.int64),
            "time": index.init_times.values,
            "channel": np.array(variables, dtype=str),
            "latitude": index.latitude,
            "longitude": index.longitude,
        },
        attrs={
            "model": f"vit-p{patch_size}",
            "units": "physical units of each channel (denormalized)",
            lineage.ATTR: lineage.dumps(lineage.forecast(cfg)),
        },
    )
    if extrapolated:  # evaluate.extrapolate_leads: say which leads the model never trained on
        ds.attrs["extrapolated_leads"] = np.array(extrapolated, dtype=np.int64)
    return ds


@contextlib.contextmanager
def _forecast_writer(out_nc, skeleton: xr.Dataset, main: bool):
    """On the main rank: the netCDF4 `forecast` variable of a temporary file, renamed to out_nc when the
    block ends without error (otherwise removed); elsewhere None."""
    if not main:
        yield None
        return
    import netCDF4

    with atomic_path(out_nc) as tmp:
        skeleton.to_netcdf(tmp, engine="netcdf4")
        with netCDF4.Dataset(tmp, "a") as nc:
            # what xarray writes for a float32 variable: NaN as fill value, so unwritten values read as missing
            yield nc.createVariable("forecast", "f4", PREDICTION_DIMS, fill_value=np.float32(np.nan))


@torch.no_grad()
def predict(cfg: dict, run_dir, tokens_path, stats_path, out_nc, sp: int | None = None) -> None:
    """Forecast the test split with run_dir/model.pt into out_nc (see the module docstring).

    sp: sequence-parallel ranks per sample (None: the training run's; 1 in a single process).
    """
    model, saved = load_model(run_dir)
    patch_size = int(saved["patch_size"])
    cfg = run_config(cfg, patch_size)
    check_trained_on(cfg, run_dir, tokens_path, saved)
    lineage.check_netcdf(stats_path, lineage.stats(cfg), "statistics file")
    # train.threads are the machine's, shared by the ranks that run on it
    local_ranks = groups.launcher_env()["local_world_size"]
    torch.set_num_threads(max(1, int(cfg.get("train", {}).get("threads", 1)) // local_ranks))
    lead_hours = [int(h) for h in cfg["evaluate"]["lead_hours"]]
    extrapolated = _check_leads(cfg, run_dir, saved, lead_hours)
    index = SplitIndex(tokens_path, cfg, "test", lead_hours)
    if index.channels != list(saved["channels"]) or index.patch_size != patch_size:
        raise SeqvitError(
            f"{tokens_path}: store has channels {index.channels} and patch size {index.patch_size}, "
            f"but {run_dir}/model.pt was trained on {saved['channels']} with patch size {patch_size}"
        )
    variables = list(cfg["evaluate"]["variables"])
    missing = [v for v in variables if v not in index.channels]
    if missing:
        raise SeqvitError(f"config key evaluate.variables: {missing} are not model channels {index.channels}")
    chunk, batch = _chunk_and_batch(cfg)
    precision = str(saved.get("precision", "fp32"))
    if precision not in PRECISIONS:
        raise SeqvitError(f"{Path(run_dir) / 'model.pt'}: precision {precision!r} is not one of {sorted(PRECISIONS)}")
    layout, owns = _start(cfg, model, patch_size, sp)
    try:
        model.to(layout.device, PRECISIONS[precision])
        mean, std = channel_stats(stats_path, variables)
        predictor = _Predictor(model, layout, index, TokenStore(tokens_path), patch_size, PRECISIONS[precision])
        predictor.keep = [index.channels.index(v) for v in variables]
        predictor.mean = mean.astype(np.float32)[None, None, :, None, None]
        predictor.std = std.astype(np.float32)[None, None, :, None, None]
        skeleton = _skeleton(cfg, patch_size, lead_hours, index, variables, extrapolated)
        with _term_raises(), _forecast_writer(out_nc, skeleton, layout.is_main) as forecast:
            for first in range(0, len(index), chunk):
                fields = predictor.chunk(first, min(first + chunk, len(index)), batch)
                if forecast is not None and fields is not None:  # rank 0 holds the gathered chunk
                    forecast[:, first : first + fields.shape[1]] = fields
        if layout.distributed:  # rank 0 has renamed the file into place before any rank reports done
            dist.barrier()
    finally:
        if owns:
            dist.destroy_process_group()


def _chunk_and_batch(cfg: dict) -> tuple[int, int]:
    """Init times per written chunk (evaluate.predict_chunk) and samples per forward pass per replica
    (evaluate.predict_batch; null: the training micro-batch, which fits the devices by construction)."""
    ecfg, tcfg = cfg["evaluate"], cfg["train"]
    if "predict_chunk" not in ecfg:  # a config that was not validated (validate() fills the defaults)
        ecfg = {
            **ecfg,
            "predict_chunk": load_schema()["properties"]["evaluate"]["properties"]["predict_chunk"]["default"],
        }
    chunk = int(ecfg["predict_chunk"])
    batch = ecfg.get("predict_batch")
    if batch is None:
        dp = int((cfg.get("parallel") or {}).get("dp") or 1)
        batch = max(1, int(tcfg["batch_size"]) // dp // int(tcfg.get("grad_accumulation", 1)))
    if chunk < 1 or int(batch) < 1:
        raise SeqvitError(
            f"config keys evaluate.predict_chunk ({chunk}) and evaluate.predict_batch ({batch}): use positive numbers"
        )
    return chunk, int(batch)


class _Predictor:
    """One rank's share of each chunk: its replica's init times, its token segment; gathered on rank 0."""

    keep: list[int]
    mean: np.ndarray
    std: np.ndarray

    def __init__(self, model, layout: groups.ProcessGrid, index: SplitIndex, store: TokenStore, patch_size: int, dtype):
        self.model, self.layout, self.index, self.store = model, layout, index, store
        self.patch_size, self.dtype = patch_size, dtype
        self.segment = groups.segment_bounds(model.num_tokens, layout.sp, layout.sp_rank)
        self.hours = torch.tensor(index.lead_hours, dtype=torch.float32)

    def _replica_inits(self, first: int, stop: int, dp_rank: int) -> np.ndarray:
        return np.array_split(np.arange(first, stop), self.layout.dp)[dp_rank]

    def _segment(self, inits: np.ndarray, batch: int) -> torch.Tensor:
        """Forecast states of this rank's tokens, [lead, init, variable, segment tokens, P*P] (normalized)."""
        start, stop = self.segment
        device, keep = self.layout.device, self.keep
        pixels = self.patch_size**2
        out = torch.empty((len(self.hours), len(inits), len(keep), stop - start, pixels))
        if len(inits) == 0:  # a replica with no init time in a short last chunk
            return out
        x_all = torch.from_numpy(self.store.read(self.index.input_index[inits], (start, stop)))
        for lead_pos, hours in enumerate(self.hours):
            for b in range(0, len(inits), batch):
                x = x_all[b : b + batch].to(device)
                lead = hours.expand(x.shape[0]).to(device)
                state = x + self.model(x.to(self.dtype), lead, token_offset=start).float()
                out[lead_pos, b : b + batch] = state[:, keep].cpu()
        return out

    def chunk(self, first: int, stop: int, batch: int) -> np.ndarray | None:
        """Forecast fields [lead, init, variable, lat, lon] of init times first .. stop-1 in physical units
        on rank 0 (None elsewhere); every rank must call it for every chunk."""
        layout = self.layout
        mine = self._segment(self._replica_inits(first, stop, layout.dp_rank), batch)
        if layout.distributed:
            tokens = self._gather(mine, first, stop)
            if tokens is None:
                return None
        else:
            tokens = mine
        fields = unpatchify(tokens.numpy(), self.patch_size, self.index.grid_shape)
        return fields * self.std + self.mean

    def _gather(self, mine: torch.Tensor, first: int, stop: int) -> torch.Tensor | None:
        """The whole chunk's tokens on rank 0 from every rank's (replica inits, token segment) block."""
        layout, num_tokens = self.layout, self.model.num_tokens
        leads, _, variables, _, pixels = mine.shape
        # gather takes equal shapes: pad to the largest replica share and the padded segment length
        share, length = -(-(stop - first) // layout.dp), groups.segment_length(num_tokens, layout.sp)
        padded = torch.zeros((leads, share, variables, length, pixels))
        padded[:, : mine.shape[1], :, : mine.shape[3]] = mine
        parts = [torch.empty_like(padded) for _ in range(layout.world_size)] if layout.is_main else None
        dist.gather(padded, parts, dst=0)  # host tensors: gloo, beside NCCL on GPUs (groups.backend_for)
        if parts is None:
            return None
        tokens = torch.empty((leads, stop - first, variables, num_tokens, pixels))
        for rank, part in enumerate(parts):
            dp_rank, sp_rank = divmod(rank, layout.sp)
            inits = self._replica_inits(first, stop, dp_rank) - first  # consecutive: a slice
            if len(inits) == 0:
                continue
            start, end = groups.segment_bounds(num_tokens, layout.sp, sp_rank)
            rows = slice(int(inits[0]), int(inits[-1]) + 1)
            tokens[:, rows, :, start:end] = part[:, : len(inits), :, : end - start]
        return tokens
