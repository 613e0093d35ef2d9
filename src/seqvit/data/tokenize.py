"""Cutting normalized fields into P x P patch tokens (contract format 5) and back.

Token layout: tokens are numbered row-major over the patch grid (patch rows follow ascending
latitude), so a contiguous run of tokens is a latitude stripe — the segment a sequence-parallel
rank holds. Inside a token, pixels are numbered row-major.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from seqvit.data import fields
from seqvit.data.grids import latitude_weights
from seqvit.data.stats import channel_stats
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

# Samples per zarr chunk along time: big enough for few files, small enough to read a batch cheaply.
TIME_CHUNK = 64


def check_patch_size(grid_shape, patch_size: int) -> None:
    height, width = (int(n) for n in grid_shape)
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise SeqvitError(
            f"config key tokenize.patch_sizes: patch size {patch_size} does not divide the grid "
            f"shape {height} x {width} (latitude x longitude); choose a common divisor of both"
        )


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


def tokenize(cfg: dict, regridded_paths, stats_path, patch_size: int, out_zarr) -> None:
    """Regridded netCDF files -> normalized tokens zarr store (contract format 5)."""
    channels = fields.channel_names(cfg)
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
    chunks = (min(TIME_CHUNK, n_time), n_channel, n_token, n_pixel)
    with atomic_path(out_zarr) as tmp:
        store.to_zarr(tmp, mode="w", encoding={"tokens": {"chunks": chunks}}, consolidated=False)


def open_tokens(path) -> xr.Dataset:
    """Open a tokens store lazily, with a clear error when it is missing."""
    if not Path(path).exists():
        raise SeqvitError(f"{path}: tokens store not found; run `seqvit tokenize` first")
    return xr.open_zarr(path, consolidated=False, chunks=None)
