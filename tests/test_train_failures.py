"""Training that fails or is killed ends with every process it started, and damaged checkpoints are not fatal.

The failure and kill tests run `seqvit train` as real processes (one, or two under torchrun with
gloo) and watch the process tree of the run: the training processes, and the helpers their
loaders start (a fork server, its loader worker, multiprocessing's resource tracker).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_regridded
from processes import command_line, descendants, identity, parent, still_running
from seqvit.config import load_config
from seqvit.data.tokenize import tokenize
from seqvit.errors import SeqvitError
from seqvit.parallel.spawn import free_port
from seqvit.train.engine import train

pytestmark = pytest.mark.workflow  # slow: real Snakemake runs or multi-process training

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, P = 8, 16, 4  # 2 x 4 patches: 8 tokens
# Seconds a failed run may take from its error to its exit, and its helpers to end after a SIGKILL.
EXIT_WITHIN = 15
HELPERS_END_WITHIN = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny tokens store where `seqvit train` looks for it, and the config (file and dict)."""
    root = tmp_path_factory.mktemp("failures")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = str(root / "results")
    cfg["data"].update(years=[2015, 2016, 2017], single_level=["t2m"], pressure_level=["t"], levels=[850])
    cfg["splits"] = {"train": [2015], "val": [2016], "test": [2017]}
    cfg["tokenize"]["patch_sizes"] = [P]
    cfg["parallel"] = {}  # one process unless a test asks for more (not the demo's per-run layout)
    cfg["model"] = {"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0}
    cfg["train"].update(
        lead_hours=[6, 24],
        batch_size=4,
        steps=12,
        lr=0.003,
        weight_decay=0.01,
        warmup_steps=2,
        val_every=4,
        checkpoint_every=4,
        log_every=2,
        threads=1,
        seed=0,
        loader_workers=1,
    )
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cfg = load_config(config)  # with the defaults the CLI adds: the store's recorded settings must match them
    paths, stats = write_regridded(root, cfg, (2015, 2016, 2017), height=HEIGHT, width=WIDTH)
    tokens = root / "results" / "tokens" / f"p{P}.zarr"
    tokenize(cfg, paths, stats, P, tokens)
    return {"cfg": cfg, "config": config, "tokens": tokens}


def _own_results(setup, tmp_path) -> tuple[Path, Path]:
    """A config whose results folder is this test's (tokens linked in): (config file, run folder)."""
    cfg = yaml.safe_load(setup["config"].read_text())
    cfg["results"] = str(tmp_path / "results")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    (tmp_path / "results" / "tokens").mkdir(parents=True)
    (tmp_path / "results" / "tokens" / f"p{P}.zarr").symlink_to(setup["tokens"])
    return config, tmp_path / "results" / "train" / f"p{P}"


def _train_command(config: Path, nproc: int, *sets: str) -> list[str]:
    command = [sys.executable]
    if nproc > 1:
        command += [
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(nproc),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ]
    command += ["-m", "seqvit.cli", "train", "--config", str(config), "--patch-size", str(P), "--quiet"]
    if nproc > 1:
        command += ["--set", f"parallel.sp={nproc}"]
    for item in sets:
        command += ["--set", item]
    return command


class Run:
    """A command in its own process, its stderr lines with the time each arrived, and every process it started."""

    def __init__(self, command):
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.seen: dict[int, tuple] = {}  # pid -> (identity, parent pid, command line)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))

    def _watch(self):
        while self.proc.poll() is None:
            try:
                pids = [self.proc.pid, *descendants(self.proc.pid)]
            except OSError:  # a process ended while its children were listed
                pids = []
            for pid in pids:
                ident = identity(pid)
                if ident is None or (pid in self.seen and self.seen[pid][0] != ident):
                    continue
                # the command line again each time: a helper first seen between its fork and its exec shows ours
                first_parent = self.seen[pid][1] if pid in self.seen else parent(pid)
                self.seen[pid] = (ident, first_parent, command_line(pid) or self.seen.get(pid, (0, 0, ""))[2])
            time.sleep(0.05)

    def _seen(self) -> dict:
        return dict(self.seen)  # a copy: the watcher adds to it meanwhile

    def helpers(self) -> dict[str, list[int]]:
        """The helper processes seen, by kind."""
        seen = self._seen()
        servers = [
            pid
            for pid, (_, ppid, cmd) in seen.items()
            if "multiprocessing.forkserver" in cmd and "multiprocessing.forkserver" not in seen.get(ppid, (0, 0, ""))[2]
        ]
        workers = [pid for pid, (_, ppid, _) in seen.items() if ppid in servers]
        trackers = [pid for pid, (_, _, cmd) in seen.items() if "multiprocessing.resource_tracker" in cmd]
        return {"fork server": servers, "loader worker": workers, "resource tracker": trackers}

    def wait(self, timeout: float) -> float:
        """Wait for the command to end; the time it ended (the test fails, and the tree is killed, past `timeout`)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"still running after {timeout} s:\n{self.stderr[-3000:]}")
        ended, self.ended_at = time.monotonic(), time.time()
        self._reader.join(10)
        self._watcher.join(10)
        return ended

    def left_behind(self) -> list[str]:
        seen = self._seen()
        return [f"{pid} {seen[pid][2][:120]}" for pid in still_running(s[0] for s in seen.values())]

    def kill_all(self):
        """SIGKILL the command and everything it started (helpers may ignore SIGTERM)."""
        for pid in still_running(s[0] for s in self._seen().values()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)

    def first(self, text: str) -> float:
        return next(at for at, line in self.lines if text in line)


def _gone_within(run: Run, seconds: float) -> tuple[list[str], float]:
    """Wait until no process of `run` runs, at most `seconds`: (those still running, seconds waited)."""
    start = time.monotonic()
    while run.left_behind() and time.monotonic() - start < seconds:
        time.sleep(0.05)
    return run.left_behind(), time.monotonic() - start


@pytest.mark.parametrize("nproc", [1, 2], ids=["one-process", "torchrun-2-ranks"])
def test_an_io_error_in_training_ends_every_rank_promptly(setup, tmp_path, nproc):
    """A file where the checkpoints folder should be: the first save fails on rank 0 (the other rank then
    waits for it in a barrier). Every process of the run ends within seconds, with a non-zero status."""
    config, run_dir = _own_results(setup, tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoints").write_text("not a folder")
    run = Run(_train_command(config, nproc))
    try:
        ended = run.wait(timeout=240)
        assert run.proc.returncode != 0
        assert "FileExistsError" in run.stderr and str(run_dir / "checkpoints") in run.stderr, run.stderr[-3000:]
        # it failed while training, with its loader running: step 4 was logged before the save
        assert (run_dir / "metrics.csv").read_text().splitlines()[-1].startswith("4,")
        assert run.helpers()["loader worker"], run.seen
        # from the error (the metrics row of step 4 is written just before the failing save) to the end of the run
        took = run.ended_at - (run_dir / "metrics.csv").stat().st_mtime
        print(
            f"{nproc} rank(s): ended {took:.1f} s after the error, {ended - run.first('Traceback'):.1f} s after its traceback"
        )
        assert took < EXIT_WITHIN, run.stderr[-3000:]
        left, _ = _gone_within(run, HELPERS_END_WITHIN)
        assert not left
    finally:
        run.kill_all()


@pytest.mark.parametrize("nproc", [1, 2], ids=["one-process", "torchrun-2-ranks"])
def test_helpers_end_when_a_training_process_is_killed(setup, tmp_path, nproc):
    """SIGKILL one training process (under torchrun: torchrun then tears the other rank down): its fork
    server, loader worker and resource tracker, and every other process of the run, end within seconds."""
    config, run_dir = _own_results(setup, tmp_path)
    run = Run(
        _train_command(config, nproc, "train.steps=100000", "train.val_every=100000", "train.checkpoint_every=100000")
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.proc.poll() is None:
            if all(len(pids) == nproc for pids in run.helpers().values()) and (run_dir / "metrics.csv").exists():
                break
            time.sleep(0.05)
        helpers = run.helpers()
        assert all(len(pids) == nproc for pids in helpers.values()), (helpers, run.stderr[-3000:])
        trainer = (
            run.proc.pid if nproc == 1 else min(p for p, (_, ppid, _) in run._seen().items() if ppid == run.proc.pid)
        )
        os.kill(trainer, signal.SIGKILL)
        killed = time.monotonic()
        ended = run.wait(timeout=120)
        assert run.proc.returncode != 0
        left, _ = _gone_within(run, HELPERS_END_WITHIN)
        print(
            f"{nproc} rank(s): helpers {helpers} gone {time.monotonic() - killed:.2f} s after the SIGKILL "
            f"(the run ended after {ended - killed:.2f} s)"
        )
        assert not left
    finally:
        run.kill_all()


# ---- damaged checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    """An uninterrupted 12-step run, and one stopped after step 8 (checkpoints step 4 and 8 on disk)."""
    root = tmp_path_factory.mktemp("checkpoint-runs")
    whole = train(setup["cfg"], setup["tokens"], root / "whole", P, progress=False)
    assert train(setup["cfg"], setup["tokens"], root / "stopped", P, progress=False, stop_at_step=8) is None
    checkpoints = root / "stopped" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step00000004", "step00000008"]
    return {"whole": torch.load(whole, weights_only=False)["state_dict"], "stopped": root / "stopped"}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# damage -> (what is cut in half, or deleted (-), or what `latest` names (->); what the warning says about it;
# the checkpoint training resumes from)
DAMAGE = {
    "truncated model states": (
        "step00000008/mp_rank_00_model_states.pt",
        "step00000008/mp_rank_00_model_states.pt: ",
        "step00000004",
    ),
    "truncated random states": ("step00000008/rng-rank00000.pt", "step00000008/rng-rank00000.pt: ", "step00000004"),
    "missing model states": (
        "-step00000008/mp_rank_00_model_states.pt",
        "step00000008/mp_rank_00_model_states.pt: missing",
        "step00000004",
    ),
    "missing step folder": ("-step00000008", "latest names 'step00000008', which is no folder", "step00000004"),
    "missing latest": ("-latest", "latest is missing", "step00000008"),
    "dangling latest": ("latest->step00000012", "latest names 'step00000012', which is no folder", "step00000008"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_newest_complete_one(setup, runs, tmp_path, caplog, damage):
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    target, said, resumed_from = DAMAGE[damage]
    checkpoints = run / "checkpoints"
    if target.startswith("latest->"):
        (checkpoints / "latest").write_text(target.removeprefix("latest->"))
    elif target.startswith("-"):
        path = checkpoints / target.removeprefix("-")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    else:
        _truncate(checkpoints / target)

    with caplog.at_level(logging.INFO):
        model = train(setup["cfg"], setup["tokens"], run, P, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "resuming" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert f"{checkpoints}/{said}" in warnings[0], warnings[0]
    assert warnings[0].endswith(f"resuming from the newest complete checkpoint, {checkpoints / resumed_from}")
    assert f"resumed from step {int(resumed_from.removeprefix('step'))}," in caplog.text
    # the rest of the run is the uninterrupted one, bit for bit, and the damage is cleared away
    state = torch.load(model, weights_only=False)["state_dict"]
    for name, tensor in runs["whole"].items():
        assert torch.equal(state[name], tensor), name
    assert (checkpoints / "latest").read_text() == "step00000012"
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step00000008", "step00000012"]


def test_no_complete_checkpoint_left_is_refused_naming_the_damage(setup, runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "step00000008")
    _truncate(checkpoints / "step00000004" / "mp_rank_00_model_states.pt")
    before = sorted(p.name for p in run.rglob("*")), (run / "metrics.csv").read_bytes()
    with pytest.raises(SeqvitError) as error:
        train(setup["cfg"], setup["tokens"], run, P, progress=False)
    message = str(error.value)
    assert f"{checkpoints}: no complete checkpoint to resume from" in message
    assert f"{checkpoints / 'latest'} names 'step00000008', which is no folder" in message
    assert f"{checkpoints / 'step00000004' / 'mp_rank_00_model_states.pt'}: " in message and "truncated" in message
    assert f"delete {checkpoints} to start training afresh" in message
    assert (sorted(p.name for p in run.rglob("*")), (run / "metrics.csv").read_bytes()) == before  # nothing touched


def test_a_lost_latest_does_not_skip_the_settings_check(setup, runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    (run / "checkpoints" / "latest").unlink()
    changed = copy.deepcopy(setup["cfg"])
    changed["train"]["lr"] = 0.01
    with pytest.raises(SeqvitError, match=r"run.json: the checkpoints .* were written with other settings"):
        train(changed, setup["tokens"], run, P, progress=False)


def test_a_checkpoint_written_before_complete_json_existed_still_resumes(setup, runs, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    for manifest in (run / "checkpoints").glob("step*/complete.json"):
        manifest.unlink()
    with caplog.at_level(logging.INFO):
        model = train(setup["cfg"], setup["tokens"], run, P, progress=False)
    assert "resumed from step 8," in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("seqvit")]
    state = torch.load(model, weights_only=False)["state_dict"]
    assert all(torch.equal(state[name], tensor) for name, tensor in runs["whole"].items())
    # the one it resumed from is kept as the fallback of the new one
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step00000008", "step00000012"]
