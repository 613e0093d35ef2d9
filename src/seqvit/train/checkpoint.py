"""Checkpoints a run can resume from bit for bit, and the signals that ask for one.

A run folder holds `checkpoints/`:
  step00000300/       one DeepSpeed checkpoint (model, optimizer partitions of every ZeRO rank,
                      scheduler, engine counters, our client state: step, metrics rows, timers)
    rng-rank00000.pt  random states of each rank (DeepSpeed saves rank 0's only), and its
                      partial sums of the metrics window (its own loss, not yet averaged)
    complete.json     the size of every file above: the checkpoint is complete
  latest              the tag of the newest complete checkpoint
  run.json            the settings the checkpoints were written with

`complete.json` and then `latest` are written (atomically) only after every rank has finished
writing its part, so a job killed in the middle of a save resumes from the previous checkpoint.
A resume checks the files of the checkpoint it starts from (sizes, and that each torch file is
whole) and, when one is missing or damaged, or `latest` is missing or names no folder, goes back
to the newest complete checkpoint with a warning; with none left it refuses, naming the damage.
The loader's position is the step itself (data/loader.SampleOrder depends on nothing else), so
it needs no state.

Slurm warns a job before its walltime ends with a signal (`--signal=USR1@600` in the Frontier
profile; SIGTERM at the end, or on scancel): StopRequest turns either into a flag that the
training loop checks after every step, on every rank together, so all ranks save the same step.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import signal
import zipfile
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch
import torch.distributed as dist

from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.lineage import differences

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Exit status of a run stopped by a signal after saving: EX_TEMPFAIL, "try again" (a Snakemake retry resumes).
EXIT_INTERRUPTED = 75


class TrainingInterrupted(SeqvitError):
    """Training stopped on a signal after writing a checkpoint; running the same command resumes."""

    exit_code = EXIT_INTERRUPTED


class StopRequest:
    """Catches SIGTERM and SIGUSR1 while training; `pending` agrees on them across ranks."""

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

    def pending(self, distributed: bool, device: torch.device | None = None) -> bool:
        """True on every rank when any rank got a stop signal (one tiny all-reduce when distributed).

        device: the training device (ProcessGrid.device), the one the group's backend serves; NCCL has
        none for host tensors.
        """
        flag = self.received is not None
        if not distributed:
            return flag
        if device is None:
            raise ValueError("StopRequest.pending: a distributed agreement needs the device of the collectives")
        buf = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return bool(buf.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"


# A checkpoint's folder, and the file in it that says its save completed on every rank.
_TAG = re.compile(r"step(\d+)")
COMPLETE = "complete.json"


def _step(tag: str) -> int:
    match = _TAG.fullmatch(tag)
    return int(match.group(1)) if match else -1


def _whole_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive, whose directory is at the end: a cut-off file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


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
        """The checkpoint a resume starts from: the one `latest` names, else the newest complete one
        (load() checks its files, and may go back further)."""
        named = self._named()
        if self._is_folder(named):
            return named
        complete = self._complete_tags()
        return complete[-1] if complete else None

    def _named(self) -> str | None:
        """What `latest` holds (None: no such file)."""
        path = self.dir / "latest"
        return path.read_text().strip() if path.is_file() else None

    def _is_folder(self, tag: str | None) -> TypeGuard[str]:
        return tag is not None and _TAG.fullmatch(tag) is not None and (self.dir / tag).is_dir()

    def _tags(self) -> list[str]:
        """Step folders, oldest first."""
        if not self.dir.is_dir():
            return []
        tags = [p.name for p in self.dir.iterdir() if _TAG.fullmatch(p.name) and p.is_dir()]
        return sorted(tags, key=_step)

    def _complete_tags(self) -> list[str]:
        """Step folders whose save completed on every rank, oldest first."""
        return [tag for tag in self._tags() if (self.dir / tag / COMPLETE).is_file()]

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
        changed = differences(saved, now)
        if not set_aside:
            raise SeqvitError(
                f"{path}: the checkpoints in {self.dir} were written with other settings ({'; '.join(changed)}); "
                f"restore the config they were trained with, or start afresh with --restart-if-changed (moves them to "
                f"{self.dir.name}.previous) or by deleting {self.dir}"
            )
        self._barrier()  # every rank has read the old folder before it moves
        if self.rank == 0:
            previous = self.dir.with_name(self.dir.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            self.dir.rename(previous)
            log.warning(
                "settings changed (%s): checkpoints moved to %s; training starts afresh", "; ".join(changed), previous
            )
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
        self._barrier()  # every rank's part is on disk before `complete.json` and `latest` name it
        if self.rank == 0:
            self._record_complete(tag)
            with atomic_path(self.dir / "run.json") as tmp:
                Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True))
            with atomic_path(self.dir / "latest") as tmp:
                Path(tmp).write_text(tag)
            self._prune(tag)
        self._barrier()
        return tag

    def load(self, engine) -> tuple[dict, dict] | tuple[None, None]:
        """Restore the newest complete checkpoint into `engine` and this rank's random states; (client state,
        rank state), or (None, None) when there is none to resume from.

        Every rank checks a share of the checkpoint's files and all agree on the outcome before
        anything is loaded: a rank that failed alone inside DeepSpeed's load would leave the others
        waiting in its collectives.
        """
        named = self._named()
        complete = self._complete_tags()
        skipped = []  # what is wrong with each newer checkpoint, for the warning or the error
        if self._is_folder(named):
            candidates = [named] + [tag for tag in reversed(complete) if _step(tag) < _step(named)]
        else:
            candidates = list(reversed(complete))
            if named is not None:
                skipped.append(f"{self.dir / 'latest'} names {named!r}, which is no folder of {self.dir}")
            elif candidates or (self.dir / "run.json").exists():  # a save completed once: `latest` was lost
                skipped.append(f"{self.dir / 'latest'} is missing")
            # else nothing was ever saved completely (the first save was cut short): start afresh
        for tag in candidates:
            problems = self._agree(self._damage(tag))
            if not problems:
                if skipped and self.rank == 0:
                    log.warning(
                        "%s; resuming from the newest complete checkpoint, %s", "; ".join(skipped), self.dir / tag
                    )
                    with atomic_path(self.dir / "latest") as tmp:  # the next save prunes the damaged ones
                        Path(tmp).write_text(tag)
                state = self._restore(engine, tag)
                if self.rank == 0 and not (self.dir / tag / COMPLETE).exists():
                    self._record_complete(tag)  # written before complete.json existed: `latest` vouched for it
                return state
            skipped += problems
        if skipped:
            raise SeqvitError(
                f"{self.dir}: no complete checkpoint to resume from ({'; '.join(skipped)}); restore what is missing, "
                f"or delete {self.dir} to start training afresh"
            )
        return None, None

    def _record_complete(self, tag: str) -> None:
        """Write complete.json: the size of every file of checkpoint `tag`, all of whose parts are on disk."""
        folder = self.dir / tag
        sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
        with atomic_path(folder / COMPLETE) as tmp:
            Path(tmp).write_text(json.dumps({"files": sizes}, indent=1))

    def _damage(self, tag: str) -> str | None:
        """What is wrong with this rank's share of the files of checkpoint `tag` (None: nothing found)."""
        folder = self.dir / tag
        if not folder.is_dir():
            return f"{folder}: missing"
        manifest = folder / COMPLETE
        sizes = None
        if manifest.is_file():
            try:
                sizes = {str(name): int(size) for name, size in json.loads(manifest.read_text())["files"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                return f"{manifest}: damaged"
            names = sorted(sizes)
        else:  # named by `latest` but written before complete.json existed: check what is there
            names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            if not any(name.endswith("model_states.pt") for name in names):
                return f"{folder}: holds no model states"
        world = dist.get_world_size() if self.distributed else 1
        for name in names[self.rank :: world]:
            path = folder / name
            if not path.is_file():
                return f"{path}: missing"
            size = path.stat().st_size
            if sizes is not None and size != sizes[name]:
                return f"{path}: {size} bytes, {sizes[name]} when written (truncated or damaged)"
            if name.endswith(".pt") and not _whole_torch_file(path):
                return f"{path}: truncated or damaged (not a whole torch file)"
        return None

    def _agree(self, problem: str | None) -> list[str]:
        """Every rank's problem with the same checkpoint, on every rank."""
        if not self.distributed:
            return [problem] if problem else []
        found: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(found, problem)
        return [p for p in found if p]

    def _restore(self, engine, tag: str) -> tuple[dict, dict]:
        folder = self.dir / tag
        rng_path = folder / f"rng-rank{self.rank:05d}.pt"
        if not rng_path.exists():
            raise SeqvitError(
                f"{rng_path}: missing; the checkpoint {folder} was written by fewer processes than this run "
                f"has; launch as many processes as before or delete {self.dir} to start afresh"
            )
        fix = f"delete {folder} to resume from the checkpoint before it, or {self.dir} to start afresh"
        try:
            _, client_state = engine.load_checkpoint(str(self.dir), tag=tag)
            own = torch.load(rng_path, weights_only=False)
        except Exception as exc:  # damage the file checks cannot see (the bytes inside a whole file)
            raise SeqvitError(f"{folder}: could not be loaded ({type(exc).__name__}: {exc}); {fix}") from exc
        if client_state is None:
            raise SeqvitError(f"{folder}: DeepSpeed could not load it; {fix}")
        set_rng_state(own["rng"])
        return client_state, own["rank_state"]

    def _prune(self, newest: str) -> None:
        """Keep the `keep` newest complete checkpoints up to `newest`; remove every other step folder: older
        ones, saves cut short, and later steps of a run that went back to an earlier checkpoint."""
        kept = [tag for tag in self._complete_tags() if _step(tag) <= _step(newest)][-self.keep :]
        for tag in self._tags():
            if tag not in kept:
                shutil.rmtree(self.dir / tag, ignore_errors=True)

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()
