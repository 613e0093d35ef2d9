"""Training loader: delivery rate against training-step consumption, and bytes read per SP rank.

    .venv/bin/python benchmarks/loader.py                       # demo grid 32 x 64, p = 2 (512 tokens)
    .venv/bin/python benchmarks/loader.py --height 128 --width 256 --patch 4 --times 256

(a) samples/s that step_loader delivers (workers 0, 1, 2; whole token sequence, batch 16) against
    samples/s of a forward+backward+AdamW step of the demo model on the same tokens; goal >= 10x.
(b) bytes a sequence-parallel rank reads (counted by the kernel: /proc/self/io rchar) for its
    segment of P = 1, 2, 4, 8, as a fraction of a whole sample's bytes; goal 1/P. Also for a store
    in the previous layout (chunks of 64 times x all tokens, zstd) for comparison.
Prints figures and ratios, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml

from seqvit.data.loader import SampleOrder, SegmentBatches, SplitIndex, step_loader
from seqvit.data.token_store import TokenStore
from seqvit.data.tokenize import open_tokens, tokenize
from seqvit.model.vit import build_model
from seqvit.parallel.groups import segment_bounds

ROOT = Path(__file__).resolve().parents[1]
LEADS = [6, 24]


def build_store(
    folder: Path, height: int, width: int, patch: int, times: int, segments: int, years=(2015,)
) -> tuple[Path, dict]:
    """Random normalized-looking fields of 7 channels (t2m; t, z, u at 500 and 850 hPa) -> tokens store.

    `times` 6-hourly steps in each of `years`; the first year is the training split, the second
    (if any) the validation split.
    """
    years = list(years)
    cfg = {
        "data": {"single_level": ["t2m"], "pressure_level": ["t", "z", "u"], "levels": [500, 850]},
        "splits": {"train": years[:1], "val": years[1:2], "test": []},
        "tokenize": {"sp_segments": segments},
    }
    lat = -90 + 180 / height * (np.arange(height) + 0.5)
    lon = 360 / width * np.arange(width)
    rng = np.random.default_rng(0)

    def noise(*shape):
        return rng.standard_normal((times, *shape, height, width), dtype=np.float32)

    paths = []
    for year in years:
        coords = {"time": pd.date_range(f"{year}-01-01", periods=times, freq="6h"), "latitude": lat, "longitude": lon}
        single = xr.Dataset({"t2m": (("time", "latitude", "longitude"), noise())}, coords=coords)
        pressure = xr.Dataset(
            {name: (("time", "level", "latitude", "longitude"), noise(2)) for name in ("t", "z", "u")},
            coords={**coords, "level": [500, 850]},
        )
        for group, ds in (("single-levels", single), ("pressure-levels", pressure)):
            path = folder / group / f"{year}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(path)
            paths.append(path)
    channels = ["t2m", "t_500", "t_850", "z_500", "z_850", "u_500", "u_850"]
    stats = xr.Dataset({"mean": ("channel", np.zeros(7)), "std": ("channel", np.ones(7))}, coords={"channel": channels})
    stats.to_netcdf(folder / "stats.nc")
    out = folder / f"p{patch}.zarr"
    started = time.perf_counter()
    tokenize(cfg, paths, folder / "stats.nc", patch, out)
    seconds = time.perf_counter() - started
    print(
        f"store: {times * len(years)} times x 7 channels, {height} x {width} grid, p = {patch}; tokenize {seconds:.1f} s"
    )
    return out, cfg


def loader_rate(batches: SegmentBatches, workers: int, steps: int) -> float:
    """Samples/s delivered once the first batch is in (worker start-up excluded)."""
    loader = iter(step_loader(batches, 0, steps + 1, workers=workers))
    x, _, _ = next(loader)
    started = time.perf_counter()
    for _ in range(steps):
        next(loader)
    return steps * x.shape[0] / (time.perf_counter() - started)


def train_rate(batches: SegmentBatches, patch: int, grid_shape) -> float:
    """Samples/s of forward + backward + AdamW of the demo model (median of 5 steps after 2 warm-up)."""
    model_cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["model"]
    x, lead, y = batches[0]
    model = build_model(model_cfg, x.shape[1], patch, grid_shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for step in range(7):
        started = time.perf_counter()
        loss = ((model(x, lead) - (y - x)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return x.shape[0] / statistics.median(times[2:])


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def bytes_per_rank(path: Path, index: SplitIndex, order: SampleOrder, steps: int, sp: int) -> tuple[float, float]:
    """Bytes each of `sp` ranks reads per distinct time it needs (inputs and targets of `steps` batches; a time
    that is one sample's target and another's input is read once): the largest over ranks with a cold store
    (shard indices read too), and with the shard indices cached."""
    times = sum(
        len(np.unique(np.concatenate([index.input_index[s], index.target_index[lead, s]])))
        for s, lead in (order.global_batch(step) for step in range(steps))
    )
    cold, warm = [], []
    for rank in range(sp):
        store = TokenStore(path)
        store.shape  # noqa: B018  (opens the array: metadata is not part of a step's reads)
        batches = SegmentBatches(store, index, order, 1, 0, segment_bounds(index.num_tokens, sp, rank))
        for result in (cold, warm):
            before = _rchar()
            own = _rchar() - before  # what reading /proc/self/io itself adds
            before = _rchar()
            for step in range(steps):
                batches[step]
            result.append((_rchar() - before - own) / times)
    return max(cold), max(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--times", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="loader steps timed per worker count")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        path, cfg = build_store(Path(tmp), args.height, args.width, args.patch, args.times, segments=8)
        index = SplitIndex(path, cfg, "train", LEADS)
        order = SampleOrder(len(index), len(LEADS), args.batch, seed=0)
        whole = SegmentBatches(TokenStore(path), index, order, 1, 0, (0, index.num_tokens))
        tokens = index.num_tokens
        threads = torch.get_num_threads()
        print(f"\n(a) delivery vs consumption, batch {args.batch}, {tokens} tokens, torch threads {threads}")
        consume = train_rate(whole, args.patch, index.grid_shape)
        print(f"  training step (demo model, fwd+bwd+AdamW): {consume:8.1f} samples/s")
        for workers in (0, 1, 2):
            deliver = loader_rate(whole, workers, args.steps)
            print(f"  loader, {workers} workers: {deliver:24.1f} samples/s   ratio {deliver / consume:6.1f}x")

        sample_bytes = 7 * tokens * args.patch**2 * 4
        print(f"\n(b) bytes one SP rank reads per sample / a whole sample ({sample_bytes} B); worst rank, 8 batches")
        old_path = Path(tmp) / "old.zarr"
        with open_tokens(path) as ds:  # the layout before segment chunking, for comparison
            old_chunks = (64, 7, tokens, args.patch**2)
            ds.load().drop_encoding().to_zarr(old_path, encoding={"tokens": {"chunks": old_chunks}}, consolidated=False)
        for label, store_path in (("segments (this layout)", path), ("64 times x all tokens, zstd (before)", old_path)):
            print(f"  {label}")
            for sp in (1, 2, 4, 8):
                cold, warm = bytes_per_rank(store_path, index, order, 8, sp)
                print(
                    f"    P = {sp}: {warm / sample_bytes:7.4f} (second pass), {cold / sample_bytes:7.4f} (first pass, with"
                    f" the shard indices)   goal 1/P = {1 / sp:.4f}"
                )


if __name__ == "__main__":
    main()
