"""Forecast samples from a tokens store: (input tokens, lead hours, target tokens).

A sample starts at an init time t of one split; its target is the state at t + lead, also in
that split (so no sample straddles two splits). Init times are those valid for every lead of
the dataset (fields.init_times), the same set every model is evaluated on.

Training reads lazily: SplitIndex says which store times make each sample, SampleOrder says
which samples make each step (from the step number alone, so a run resumes mid-epoch),
TokenStore reads one token segment of chosen times, SegmentBatches puts them together for one
rank and step_loader prefetches them in worker processes. Prediction reads the inputs of one
chunk of init times at a time, its rank's token segment only (train/predict.py, through SplitIndex
and TokenStore); ForecastPairs reads a whole split into memory at once, for small splits.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import os
import signal
import sys
import weakref
from multiprocessing import forkserver, resource_tracker
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seqvit.data import fields
from seqvit.data.token_store import TokenStore, check_range
from seqvit.data.tokenize import open_tokens
from seqvit.errors import SeqvitError

_SLURM_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Set only while a training process starts its fork server: the server finds its trainer's pid here.
_TRAINER_ENV = "SEQVIT_LOADER_TRAINER"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# In a fork server bound to its training process (and in the workers forked from it): the server's pid.
_bound_server: int | None = None


def _die_with_parent() -> bool:
    """Have the kernel SIGKILL this process when its parent ends (Linux; False elsewhere).

    SIGKILL because the loader's helpers ignore SIGTERM on purpose (_worker_context). Without this
    they outlive a killed training process: a worker's parent is the fork server, which stays up as
    long as a worker holds its pipe, and the worker only watches that server.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _bind_to_trainer() -> None:
    """In a fork server that a training process started (it imports this module first): end with it.

    Should the trainer end before prctl takes effect, the server still ends: with no worker yet, its
    "alive" pipe then has no writer left.
    """
    global _bound_server
    trainer = os.environ.pop(_TRAINER_ENV, None)  # popped: the workers forked from here must not see it
    if trainer is None or str(os.getppid()) != trainer:  # not a fork server a trainer has just started
        return
    if _die_with_parent():
        _bound_server = os.getpid()


_bind_to_trainer()


class SplitIndex:
    """(input time, lead, target time) of one split of a tokens store; loads no token values."""

    def __init__(self, tokens_path, cfg: dict, split: str, lead_hours):
        self.path = Path(tokens_path)
        self.lead_hours = [int(h) for h in lead_hours]
        if not self.lead_hours:
            raise SeqvitError(f"no lead times given for the {split} split (config train.lead_hours)")
        store = open_tokens(tokens_path)
        try:
            times = pd.DatetimeIndex(store["time"].values)
            self.channels = [str(c) for c in store["channel"].values]
            self.num_tokens = int(store["tokens"].shape[2])
            self.patch_size = int(store.attrs["patch_size"])
            self.grid_shape = tuple(int(n) for n in store.attrs["grid_shape"])
            self.latitude = np.asarray(store.attrs["latitude"], dtype=np.float64)
            self.longitude = np.asarray(store.attrs["longitude"], dtype=np.float64)
        finally:
            store.close()

        in_split = fields.split_times(times, cfg, split)
        self.split_positions = np.flatnonzero(in_split)  # the split's rows of the store's time axis
        split_times = times[in_split]
        self.init_times = pd.DatetimeIndex(fields.init_times(split_times, self.lead_hours))
        if len(self.init_times) == 0:
            raise SeqvitError(
                f"{tokens_path}: the {split} split (years {cfg['splits'][split]}) has no init time "
                f"with targets at leads {self.lead_hours} h; check splits.{split} and data.years"
            )
        position = pd.Series(self.split_positions, index=split_times)
        self.input_index = position[self.init_times].to_numpy()
        self.target_index = np.stack(
            [position[self.init_times + pd.Timedelta(hours=h)].to_numpy() for h in self.lead_hours]
        )  # [lead, init]

    def __len__(self) -> int:
        return len(self.init_times)


class SampleOrder:
    """Deterministic order of training samples: epoch e is a permutation of all init times drawn from
    (seed, e), each with a lead drawn from (seed, e); global batch k of an epoch is rows [kG, (k+1)G).
    Step s -> epoch s // batches_per_epoch, batch s % batches_per_epoch (the tail of an epoch that does
    not fill a batch is dropped). Depends on nothing but (num_samples, num_leads, global_batch, seed, step),
    so a run resumes mid-epoch from its step alone."""

    def __init__(self, num_samples: int, num_leads: int, global_batch: int, seed: int):
        self.num_samples, self.num_leads = int(num_samples), int(num_leads)
        self.batch_size, self.seed = int(global_batch), int(seed)
        if self.num_leads < 1:
            raise SeqvitError("config key train.lead_hours: no lead time to draw from; list at least one")
        if self.batch_size < 1:
            raise SeqvitError(f"config key train.batch_size: {global_batch} is not a positive number of samples")
        self.batches_per_epoch = self.num_samples // self.batch_size
        if self.batches_per_epoch == 0:
            raise SeqvitError(
                f"config key train.batch_size: a global batch of {self.batch_size} samples does not fit the "
                f"training split's {self.num_samples} init times; lower train.batch_size or add years to splits.train"
            )
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample permutation [N], lead positions [N]) of one epoch."""
        if self._epoch is None or self._epoch[0] != epoch:
            # SeedSequence: an independent stream per (seed, epoch); it takes non-negative words only
            rng = np.random.default_rng([self.seed % 2**64, epoch])
            samples = rng.permutation(self.num_samples)
            leads = rng.integers(self.num_leads, size=self.num_samples)
            self._epoch = (epoch, samples, leads)
        return self._epoch[1], self._epoch[2]

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample positions [G], lead positions [G]) of a training step."""
        step = int(step)
        if step < 0:
            raise SeqvitError(f"training step {step} is negative")
        epoch, batch = divmod(step, self.batches_per_epoch)
        samples, leads = self.epoch(epoch)
        rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        return samples[rows], leads[rows]

    def rank_batch(self, step: int, dp: int, dp_rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [dp_rank*G/D, (dp_rank+1)*G/D) of the global batch of `step`."""
        share = _replica_share(self.batch_size, dp, dp_rank)
        samples, leads = self.global_batch(step)
        rows = slice(dp_rank * share, (dp_rank + 1) * share)
        return samples[rows], leads[rows]


def _replica_share(global_batch: int, dp: int, dp_rank: int) -> int:
    if dp < 1 or not 0 <= dp_rank < dp:
        raise SeqvitError(f"data-parallel rank {dp_rank} of {dp} replicas does not exist")
    if global_batch % dp:
        raise SeqvitError(
            f"config key train.batch_size: {global_batch} does not split over {dp} data-parallel replicas; "
            f"use a multiple of {dp}"
        )
    return global_batch // dp


def read_pairs(store: TokenStore, index: SplitIndex, samples, leads, token_range):
    """x, lead_hours, y for explicit (sample position, lead position) pairs (validation uses this)."""
    samples = np.asarray(samples, dtype=np.int64).reshape(-1)
    leads = np.asarray(leads, dtype=np.int64).reshape(-1)
    if samples.shape != leads.shape:
        raise SeqvitError(f"read_pairs: {samples.size} samples but {leads.size} lead positions")
    if samples.size and (samples.min() < 0 or samples.max() >= len(index)):
        raise IndexError(f"{index.path}: sample positions outside 0 .. {len(index) - 1}")
    if leads.size and (leads.min() < 0 or leads.max() >= len(index.lead_hours)):
        raise IndexError(f"{index.path}: lead positions outside 0 .. {len(index.lead_hours) - 1}")
    check_range(token_range, index.num_tokens, index.path)
    times = np.concatenate([index.input_index[samples], index.target_index[leads, samples]])
    block = torch.from_numpy(store.read(times, token_range))
    hours = torch.tensor(index.lead_hours, dtype=torch.float32)[torch.from_numpy(leads)]
    return block[: samples.size], hours, block[samples.size :]


class SegmentBatches(torch.utils.data.Dataset):
    """Item `step` = this rank's batch of that training step: its data-parallel rows, its token segment."""

    def __init__(self, store: TokenStore, index: SplitIndex, order: SampleOrder, dp: int, dp_rank: int, token_range):
        if order.num_samples != len(index) or order.num_leads != len(index.lead_hours):
            raise SeqvitError(
                f"{index.path}: sample order over {order.num_samples} init times x {order.num_leads} leads does "
                f"not match the split's {len(index)} x {len(index.lead_hours)}"
            )
        if store.shape[2] != index.num_tokens:
            raise SeqvitError(f"{store.path}: {store.shape[2]} tokens, but the split index has {index.num_tokens}")
        _replica_share(order.batch_size, dp, dp_rank)
        self.token_range = check_range(token_range, index.num_tokens, index.path)
        self.store, self.index, self.order, self.dp, self.dp_rank = store, index, order, int(dp), int(dp_rank)

    def __getitem__(self, step: int):
        samples, leads = self.order.rank_batch(step, self.dp, self.dp_rank)
        return read_pairs(self.store, self.index, samples, leads, self.token_range)

    def steps(self, first: int, count: int):
        """The batches of steps first .. first+count-1 in one read, stacked: x [count, b, ...], leads, y."""
        picked = [self.order.rank_batch(step, self.dp, self.dp_rank) for step in range(first, first + count)]
        samples, leads = (np.concatenate(parts) for parts in zip(*picked))
        x, hours, y = read_pairs(self.store, self.index, samples, leads, self.token_range)
        return x.unflatten(0, (count, -1)), hours.unflatten(0, (count, -1)), y.unflatten(0, (count, -1))


class _StepGroups(torch.utils.data.Dataset):
    """Item k = the batches of `group` consecutive steps from start + k * group (fewer at the end)."""

    def __init__(self, batches: SegmentBatches, start: int, stop: int, group: int):
        self.batches, self.start, self.stop, self.group = batches, start, stop, group

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.group)

    def __getitem__(self, k: int):
        first = self.start + k * self.group
        return self.batches.steps(first, min(self.group, self.stop - first))


# A worker hands each item to the training process with a fixed cost (about 2 ms on a 2-core machine,
# whatever the size); items of at least this many bytes keep that cost small against the reads.
_ITEM_BYTES = 8 * 2**20
_MAX_GROUP = 16


def _steps_per_item(batches: SegmentBatches) -> int:
    channels, pixels = batches.store.shape[1], batches.store.shape[3]
    tokens = batches.token_range[1] - batches.token_range[0]
    batch_bytes = 2 * (batches.order.batch_size // batches.dp) * channels * tokens * pixels * 4
    return int(min(_MAX_GROUP, max(1, _ITEM_BYTES // max(batch_bytes, 1))))


# Step loaders whose workers may still run; closed at exit (_close_open_loaders).
_OPEN_LOADERS: weakref.WeakSet = weakref.WeakSet()


class _Ungrouped:
    """Iterates a DataLoader of step groups one step at a time; close() stops its workers."""

    def __init__(self, loader):
        self.loader = loader
        self._steps = None  # the iteration under way
        self._workers = []

    def __iter__(self):
        self.close()
        self._steps = self._iterate()
        return self._steps

    def _iterate(self):
        before = set(multiprocessing.active_children())
        iterator = iter(self.loader)  # starts the workers
        self._workers = [p for p in multiprocessing.active_children() if p not in before]
        _OPEN_LOADERS.add(self)
        try:
            for x, hours, y in iterator:
                for i in range(x.shape[0]):
                    yield x[i], hours[i], y[i]
        finally:
            del iterator  # torch stops its workers in order when the last reference goes
            self._stop_workers()

    def close(self) -> None:
        """Stop the workers now, also mid-iteration (after an error in training, or in a worker)."""
        steps, self._steps = self._steps, None
        if steps is not None:
            steps.close()
        self._stop_workers()

    def _stop_workers(self) -> None:
        # Those still alive here belong to a torch iterator that an exception's traceback keeps: torch
        # would leave them to multiprocessing's SIGTERM at exit, which they ignore (_worker_context),
        # and the process would never end.
        workers, self._workers = self._workers, []
        _OPEN_LOADERS.discard(self)
        for worker in workers:
            if worker.is_alive():
                worker.kill()  # it only reads: nothing to lose
            worker.join(5)


@atexit.register  # registered after torch's and multiprocessing's exit handlers, so it runs before them
def _close_open_loaders() -> None:
    for loader in list(_OPEN_LOADERS):
        loader.close()


def _worker_init(_worker_id: int) -> None:
    # Reads are I/O and copies; the training process's threads need the cores.
    torch.set_num_threads(1)
    # Runs after torch's own worker handlers, which would end a worker on a SIGTERM that Slurm sends to
    # the whole step while the training process is still writing its checkpoint (see _worker_context).
    for sig in _SLURM_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Our parent is the fork server, which ends with the training process (_bind_to_trainer): end with it.
    if _bound_server is not None and _die_with_parent() and os.getppid() != _bound_server:
        os._exit(0)  # the server ended before prctl took effect


def _worker_context():
    """Workers forked from a fresh server process that has imported this module.

    Forking the training process itself (the default on Linux) copies it with the locks its other
    threads hold at that moment (TensorBoard's writer, zarr's I/O loop, gloo), and a worker then
    hangs now and then; the server is single-threaded, and forking it is as quick as forking the trainer.

    Slurm signals every process of a job step (USR1 before the walltime, TERM at the end). The
    training process catches both and checkpoints; the server, its workers and multiprocessing's
    resource tracker must not die under it meanwhile. Both helpers are started here with the two
    signals ignored, which they keep across exec, and workers ignore them too (_worker_init).

    All still end with training, however it ends: the step loader stops its workers when the
    iteration ends or fails (_Ungrouped.close, also at exit); if the training process is killed,
    the kernel kills the server (a parent-death signal it sets up when it imports this module,
    told its trainer by _TRAINER_ENV) and the server's death its workers (_worker_init); the
    resource tracker ends when the last of them has closed its pipe.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SLURM_SIGNALS}
    except ValueError:  # not the main thread: signals are not ours to arrange
        return context
    try:
        resource_tracker.ensure_running()
        # Only from the main thread: a parent-death signal fires when the thread that started the server ends.
        os.environ[_TRAINER_ENV] = str(os.getpid())
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(_TRAINER_ENV, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return context


def step_loader(batches: SegmentBatches, start_step: int, stop_step: int, workers: int = 1, prefetch: int = 2):
    """Iterable over the batches of steps start_step .. stop_step-1, in order, prefetched by `workers` worker
    processes (0: read in this process when asked for). With workers, each worker item holds as many
    consecutive steps as make about 8 MiB (up to 16), one read each, handed over in one piece."""
    if not 0 <= int(start_step) <= int(stop_step):
        raise SeqvitError(f"step_loader: steps {start_step} .. {stop_step} are not an increasing range from 0")
    if int(workers) < 0 or int(prefetch) < 1:
        raise SeqvitError(
            f"config key train.loader_workers: {workers} worker processes (prefetch {prefetch}); use 0 or more"
        )
    if workers == 0:
        return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(int(start_step), int(stop_step)))
    # Workers deliver several consecutive steps per item when batches are small (_steps_per_item).
    groups = _StepGroups(batches, int(start_step), int(stop_step), _steps_per_item(batches))
    loader = torch.utils.data.DataLoader(
        groups,
        batch_size=None,
        num_workers=int(workers),
        worker_init_fn=_worker_init,
        prefetch_factor=int(prefetch),
        multiprocessing_context=_worker_context(),
    )
    return _Ungrouped(loader)


class ForecastPairs(torch.utils.data.Dataset):
    """Map-style dataset of the forecast pairs of one split for evaluation, read into memory once:
    one item per (lead, init time), leads outermost. (Training reads segments: SegmentBatches.)
    """

    def __init__(self, tokens_path, cfg: dict, split: str, lead_hours):
        index = SplitIndex(tokens_path, cfg, split, lead_hours)
        self.lead_hours, self.init_times, self.channels = index.lead_hours, index.init_times, index.channels
        self.patch_size, self.grid_shape = index.patch_size, index.grid_shape
        self.latitude, self.longitude = index.latitude, index.longitude
        rows = index.split_positions
        self.tokens = torch.from_numpy(TokenStore(tokens_path).read(rows, (0, index.num_tokens)))
        # positions in self.tokens (the split's rows) rather than on the store's time axis
        self.input_index = torch.from_numpy(np.searchsorted(rows, index.input_index))
        self.target_index = torch.from_numpy(np.searchsorted(rows, index.target_index))  # [lead, init]

    def __len__(self) -> int:
        return len(self.init_times) * len(self.lead_hours)

    def _split_index(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item indices -> (init position, lead position)."""
        n_init = len(self.init_times)
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
