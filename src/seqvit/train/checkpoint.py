"""Checkpoints a run can resume from bit for bit, and the signals that ask for one.

A run folder holds `checkpoints/`:
  step00000300/       one DeepSpeed checkpoint (model, optimizer partitions of every ZeRO rank,
                      scheduler, engine counters, our client state: step, metrics rows, timers)
    rng-rank00000.pt  random states of each rank (DeepSpeed saves rank 0's only), and its
                      partial sums of the metrics window (its own loss, not yet averaged)
  latest              the tag of the newest complete checkpoint
  run.json            the settings the checkpoints were written with

`latest` is rewritten (atomically) only after every rank has finished writing its part, so a job
killed in the middle of a save resumes from the previous checkpoint. The loader's position is
the step itself (data/loader.SampleOrder depends on nothing else), so it needs no state.

Slurm warns a job before its walltime ends with a signal (`--signal=USR1@600` in the Frontier
profile; SIGTERM at the end, or on scancel): StopRequest turns either into a flag that the
training loop checks after every step, on every rank together, so all ranks save the same step.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Exit status of a run stopped by a signal after saving: EX_TEMPFAIL, "try again" (a Snakemake retry resumes).
EXIT_INTERRUPTED = 75


class TrainingInterrupted(SeqvitError):
    """Training stopped on a signal after writing a checkpoint; running the same command resumes."""

    exit_code = EXIT_INTERRUPTED


class StopRequest:
    """Catches SIGTERM and SIGUSR1 while training; `pending(layout)` agrees on them across ranks."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the default handlers
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        self.received = signum

    def pending(self, distributed: bool) -> bool:
        """True on every rank when any rank got a stop signal (one tiny all-reduce when distributed)."""
        flag = self.received is not None
        if not distributed:
            return flag
        buf = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return bool(buf.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The `checkpoints/` folder of a run; every method is called by every rank."""

    def __init__(self, run_dir, rank: int, distributed: bool, keep: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.rank = rank
        self.distributed = distributed
        self.keep = max(1, int(keep))

    @property
    def latest_tag(self) -> str | None:
        path = self.dir / "latest"
        if not path.exists():
            return None
        tag = path.read_text().strip()
        return tag if (self.dir / tag).is_dir() else None

    def check_settings(self, settings: dict, set_aside: bool = False) -> None:
        """Refuse to resume checkpoints written with other settings (they would not load, or not mean the same).

        set_aside: instead, move them to checkpoints.previous/ (replacing an older one) and start afresh;
        the workflow does this, because Snakemake reruns training exactly when its settings changed.
        """
        path = self.dir / "run.json"
        if self.latest_tag is None or not path.exists():
            return
        saved = json.loads(path.read_text())
        now = json.loads(json.dumps(settings))
        if saved == now:
            return
        changed = sorted(key for key in set(saved) | set(now) if saved.get(key) != now.get(key))
        if not set_aside:
            raise SeqvitError(
                f"{path}: the checkpoints in {self.dir} were written with other settings ({', '.join(changed)} "
                f"differ: {[saved.get(k) for k in changed]} then, {[now.get(k) for k in changed]} now); restore "
                f"the config they were trained with, or start afresh with --restart-if-changed (moves them to "
                f"{self.dir.name}.previous) or by deleting {self.dir}"
            )
        self._barrier()  # every rank has read the old folder before it moves
        if self.rank == 0:
            previous = self.dir.with_name(self.dir.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            self.dir.rename(previous)
            log.warning("settings changed (%s): checkpoints moved to %s; training starts afresh",
                        ", ".join(changed), previous)  # fmt: skip
        self._barrier()

    def save(self, engine, step: int, client_state: dict, settings: dict, rank_state: dict | None = None) -> str:
        """Write checkpoint `step`: DeepSpeed's part, and this rank's random states and `rank_state`."""
        tag = f"step{step:08d}"
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if (self.dir / tag).exists():  # a partial save of a killed run, or a second save of this step
                shutil.rmtree(self.dir / tag)
        self._barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        with atomic_path(self.dir / tag / f"rng-rank{self.rank:05d}.pt") as tmp:
            torch.save({"rng": rng_state(), "rank_state": rank_state or {}}, tmp)
        self._barrier()  # every rank's part is on disk before `latest` names it
        if self.rank == 0:
            with atomic_path(self.dir / "run.json") as tmp:
                Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True))
            with atomic_path(self.dir / "latest") as tmp:
                Path(tmp).write_text(tag)
            self._prune(tag)
        self._barrier()
        return tag

    def load(self, engine) -> tuple[dict, dict] | tuple[None, None]:
        """Restore the newest checkpoint into `engine` and this rank's random states; (client state, rank state)."""
        tag = self.latest_tag
        if tag is None:
            return None, None
        rng_path = self.dir / tag / f"rng-rank{self.rank:05d}.pt"
        if not rng_path.exists():
            raise SeqvitError(
                f"{rng_path}: missing; the checkpoint {self.dir / tag} was written by fewer processes than this run "
                f"has; launch as many processes as before or delete {self.dir} to start afresh"
            )
        _, client_state = engine.load_checkpoint(str(self.dir), tag=tag)
        if client_state is None:
            raise SeqvitError(f"{self.dir / tag}: DeepSpeed could not load it; delete {self.dir} to start afresh")
        own = torch.load(rng_path, weights_only=False)
        set_rng_state(own["rng"])
        return client_state, own["rank_state"]

    def _prune(self, newest: str) -> None:
        tags = sorted(p.name for p in self.dir.glob("step*") if p.is_dir() and p.name <= newest)
        for old in tags[: -self.keep]:
            shutil.rmtree(self.dir / old, ignore_errors=True)

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()
