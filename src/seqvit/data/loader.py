"""Forecast samples from a tokens store: (input tokens, lead hours, target tokens).

A sample starts at an init time t of one split; its target is the state at t + lead, also in
that split (so no sample straddles two splits). Init times are those valid for every lead of
the dataset (fields.init_times), the same set every model is evaluated on.

The demo store is small, so the split is read into memory once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from seqvit.data import fields
from seqvit.data.tokenize import open_tokens
from seqvit.errors import SeqvitError


class ForecastPairs(torch.utils.data.Dataset):
    """Map-style dataset of forecast pairs for one split.

    random_lead=True (training): one item per init time, its lead drawn uniformly from
    `lead_hours` with `generator` (so a run that saves the generator state resumes exactly).
    random_lead=False (evaluation): one item per (lead, init time), leads outermost.
    """

    def __init__(
        self,
        tokens_path,
        cfg: dict,
        split: str,
        lead_hours,
        random_lead: bool,
        generator: torch.Generator | None = None,
    ):
        self.lead_hours = [int(h) for h in lead_hours]
        if not self.lead_hours:
            raise SeqvitError(f"no lead times given for the {split} split (config train.lead_hours)")
        store = open_tokens(tokens_path)
        times = pd.DatetimeIndex(store["time"].values)
        in_split = fields.split_times(times, cfg, split)
        split_times = times[in_split]
        self.init_times = pd.DatetimeIndex(fields.init_times(split_times, self.lead_hours))
        if len(self.init_times) == 0:
            raise SeqvitError(
                f"{tokens_path}: the {split} split (years {cfg['splits'][split]}) has no init time "
                f"with targets at leads {self.lead_hours} h; check splits.{split} and data.years"
            )
        self.tokens = torch.from_numpy(np.ascontiguousarray(store["tokens"].isel(time=np.flatnonzero(in_split)).values))
        self.channels = [str(c) for c in store["channel"].values]
        self.patch_size = int(store.attrs["patch_size"])
        self.grid_shape = tuple(int(n) for n in store.attrs["grid_shape"])
        self.latitude = np.asarray(store.attrs["latitude"], dtype=np.float64)
        self.longitude = np.asarray(store.attrs["longitude"], dtype=np.float64)
        store.close()

        position = pd.Series(np.arange(len(split_times)), index=split_times)
        self.input_index = torch.tensor(position[self.init_times].to_numpy())
        self.target_index = torch.stack(
            [torch.tensor(position[self.init_times + pd.Timedelta(hours=h)].to_numpy()) for h in self.lead_hours]
        )  # [lead, init]
        self.random_lead = random_lead
        self.generator = generator

    def __len__(self) -> int:
        n_init = len(self.init_times)
        return n_init if self.random_lead else n_init * len(self.lead_hours)

    def _split_index(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item indices -> (init position, lead position)."""
        n_init = len(self.init_times)
        if self.random_lead:
            lead = torch.randint(len(self.lead_hours), index.shape, generator=self.generator)
            return index, lead
        return index % n_init, index // n_init

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Several items at once (faster than collating single items): x, lead_hours, y."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} items")
        init, lead = self._split_index(index)
        x = self.tokens[self.input_index[init]]
        y = self.tokens[self.target_index[lead, init]]
        hours = torch.as_tensor(self.lead_hours, dtype=torch.float32)[lead]
        return x, hours, y

    def __getitem__(self, index: int):
        x, hours, y = self.batch([index])
        return x[0], hours[0], y[0]
