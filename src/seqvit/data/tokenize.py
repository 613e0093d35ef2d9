"""Cutting normalized fields into P x P patch tokens (contract format 5) and back.

Token layout: tokens are numbered row-major over the patch grid (patch rows follow ascending
latitude), so a contiguous run of tokens is a latitude stripe — the segment a sequence-parallel
rank holds. Inside a token, pixels are numbered row-major.

Store layout (zarr v3, sharded, uncompressed): one shard file per TIME_SHARD times holds inner
chunks of one time x all channels x one token segment of ceil(L / tokenize.sp_segments) tokens.
A sequence-parallel rank whose degree divides sp_segments thus reads exactly its segment's
chunks of exactly the samples it needs, from a store of few files.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from seqvit import lineage
from seqvit.data import fields
from seqvit.data.grids import latitude_weights
from seqvit.data.stats import channel_stats
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.patches import check_patch_size

# Times per shard file: few files per store (about 100 for 4 years 6-hourly).
TIME_SHARD = 64
# Default of tokenize.sp_segments: token segments per sample, the largest sequence-parallel
# degree that reads exactly its own bytes (any divisor of it does too).
SP_SEGMENTS = 8
# Store attribute: a new random id each time a store is written.
STORE_ID = "seqvit_store_id"


def _permute(array, order):
    return array.permute(*order) if isinstance(array, torch.Tensor) else array.transpose(order)


def patchify(field_array, patch_size: int):
    """[..., H, W] -> [..., L, P*P] with L = (H/P)(W/P); works on numpy arrays and torch tensors."""
    *lead, height, width = field_array.shape
    check_patch_size((height, width), patch_size)
    p = patch_size
    rows, cols = height // p, width // p
    n = len(lead)
    x = field_array.reshape(*lead, rows, p, cols, p)
    # (.., patch row, pixel row, patch col, pixel col) -> (.., patch row, patch col, pixel row, pixel col)
    x = _permute(x, (*range(n), n, n + 2, n + 1, n + 3))
    return x.reshape(*lead, rows * cols, p * p)


def unpatchify(tokens, patch_size: int, grid_shape):
    """Exact inverse of patchify: [..., L, P*P] -> [..., H, W]."""
    height, width = (int(n) for n in grid_shape)
    check_patch_size((height, width), patch_size)
    p = patch_size
    rows, cols = height // p, width // p
    *lead, n_tokens, n_pixels = tokens.shape
    if n_tokens != rows * cols or n_pixels != p * p:
        raise SeqvitError(
            f"tokens of shape {tuple(tokens.shape)} do not match patch size {p} on a "
            f"{height} x {width} grid (expected {rows * cols} tokens of {p * p} pixels)"
        )
    n = len(lead)
    x = tokens.reshape(*lead, rows, cols, p, p)
    x = _permute(x, (*range(n), n, n + 2, n + 1, n + 3))
    return x.reshape(*lead, height, width)


def token_weights(lat, grid_shape, patch_size: int) -> np.ndarray:
    """Latitude (cell-area) weights of the global grid in token layout, [L, P*P], mean 1."""
    height, width = (int(n) for n in grid_shape)
    lat = np.asarray(lat, dtype=np.float64)
    if lat.shape != (height,):
        raise SeqvitError(f"token_weights: {lat.size} latitudes for a grid of {height} rows")
    per_row = latitude_weights(lat)
    weights = np.broadcast_to(per_row[:, None], (height, width))
    return np.ascontiguousarray(patchify(weights, patch_size)).astype(np.float32)


def sp_segments(cfg: dict) -> int:
    """Config key tokenize.sp_segments (default SP_SEGMENTS), checked."""
    value = (cfg.get("tokenize") or {}).get("sp_segments", SP_SEGMENTS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SeqvitError(
            f"config key tokenize.sp_segments: {value!r} is not a positive integer; give the largest "
            f"parallel.sp the store will be trained with (default {SP_SEGMENTS})"
        )
    return value


def token_chunk(num_tokens: int, segments: int) -> int:
    """Tokens per zarr chunk: ceil(L / segments), so segment k of `segments` is chunk k."""
    return max(1, -(-int(num_tokens) // int(segments)))


def tokenize(cfg: dict, regridded_paths, stats_path, patch_size: int, out_zarr) -> None:
    """Regridded netCDF files -> normalized tokens zarr store (contract format 5)."""
    regridded_paths = [Path(p) for p in regridded_paths]
    missing = [str(p) for p in regridded_paths if not p.exists()]
    if not regridded_paths or missing:
        shown = f"{len(missing)} of {len(regridded_paths)}, e.g. {missing[0]}" if missing else "none given"
        raise SeqvitError(f"tokenize: regridded files missing ({shown}); run the regrid stage first")
    channels = fields.channel_names(cfg)
    for path in regridded_paths:
        lineage.check_netcdf(path, lineage.regridded(cfg), "regridded file")
    lineage.check_netcdf(stats_path, lineage.stats(cfg), "statistics file")
    data = fields.open_channels(regridded_paths, channels)
    grid_shape = (data.sizes["latitude"], data.sizes["longitude"])
    check_patch_size(grid_shape, patch_size)
    mean, std = channel_stats(stats_path, channels)

    values = data.values  # float32 (time, channel, lat, lon)
    values -= mean.astype(np.float32)[None, :, None, None]
    values /= std.astype(np.float32)[None, :, None, None]
    tokens = np.ascontiguousarray(patchify(values, patch_size), dtype=np.float32)

    n_time, n_channel, n_token, n_pixel = tokens.shape
    store = xr.Dataset(
        {"tokens": (("time", "channel", "token", "pixel"), tokens)},
        coords={"time": data["time"].values, "channel": np.array(channels, dtype=object)},
        attrs={
            "patch_size": int(patch_size),
            "grid_shape": [int(n) for n in grid_shape],
            "latitude": [float(v) for v in data["latitude"].values],
            "longitude": [float(v) for v in data["longitude"].values],
        },
    )
    segments = sp_segments(cfg)
    store.attrs["sp_segments"] = segments
    store.attrs[lineage.ATTR] = lineage.dumps(lineage.tokens(cfg, patch_size))
    # Tells a checkpoint or a model which store, not only which settings, it was trained on.
    store.attrs[STORE_ID] = uuid.uuid4().hex
    chunk = token_chunk(n_token, segments)
    encoding = {
        "tokens": {
            "chunks": (1, n_channel, chunk, n_pixel),  # one sample's segment: nobody reads more than they use
            "shards": (min(TIME_SHARD, n_time), n_channel, chunk * -(-n_token // chunk), n_pixel),
            # Normalized float32 compresses by only ~15% with zstd; raw chunks are cheaper to read.
            "compressors": None,
        }
    }
    # zarr encodes one inner chunk per pipeline step by default; batching a shard's chunks is ~2x faster.
    with atomic_path(out_zarr) as tmp, zarr.config.set({"codec_pipeline.batch_size": TIME_SHARD * segments}):
        store.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False, zarr_format=3)


def check_tokens_store(path) -> None:
    """A clear error when `path` is missing or holds no tokens array."""
    path = Path(path)
    if not path.exists():
        raise SeqvitError(f"{path}: tokens store not found; run `seqvit tokenize` first")
    if not any((path / "tokens" / name).exists() for name in ("zarr.json", ".zarray")):
        raise SeqvitError(f"{path}: not a tokens store (no `tokens` array); rerun `seqvit tokenize`")


def store_identity(path) -> tuple[dict | None, str | None]:
    """(lineage, store id) of a tokens store."""
    check_tokens_store(path)
    attrs = zarr.open_group(str(path), mode="r").attrs
    store_id = attrs.get(STORE_ID)  # a JSON value; tokenize writes a hex string
    return lineage.parse(attrs.get(lineage.ATTR)), None if store_id is None else str(store_id)


def open_tokens(path) -> xr.Dataset:
    """Open a tokens store lazily, with a clear error when it is missing."""
    check_tokens_store(path)
    return xr.open_zarr(path, consolidated=False, chunks=None)
