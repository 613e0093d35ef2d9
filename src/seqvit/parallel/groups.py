"""The one module that owns process groups: sequence parallel (SP) x data parallel (DP).

World = P x D ranks. Sequence-parallel groups are P contiguous ranks (so they sit inside a node
when P divides the ranks per node): {d*P, ..., d*P + P - 1} for replica d. The ranks holding the
same segment are {s, s + P, s + 2P, ...} (ProcessGrid.dp_ranks); they need no group of their own,
because gradients are averaged over the whole world (sequence and data ranks together, LSS's
"double gradient averaging"; it is also what Ulysses needs, see train/engine.py).

The backend of the process group follows the training device (backend_for), and every
collective of training runs on tensors of that device (ProcessGrid.device).

A rank of sequence-parallel group d holds a contiguous segment of the token sequence
(segment_bounds): with tokens row-major over the patch grid, a latitude stripe.

Two-level methods (TWO_LEVEL, parallel.sp_inner = I > 1): inside each sequence-parallel group,
inner groups of I adjacent ranks (the Ulysses all-to-all; adjacent so that they share a node
first) and outer groups of the P / I ranks with the same inner index, I apart (LSS or ring over
the tokens the inner exchange gathered). ProcessGrid.inner_group / outer_group hold this rank's.

Everything that can be wrong with a layout (world size, heads, sequence length, batch) is
checked by check_layout before any step runs, with the fix in the message.

Launchers: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
and Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; tasks on this node from
SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE at SLURM_NODEID;
MASTER_ADDR from the environment or the first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST,
expanded in pure Python by parallel/hostlist.py; MASTER_PORT from the environment or
20000 + SLURM_JOB_ID mod 40000, so that jobs sharing a node do not collide).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from seqvit.errors import SeqvitError
from seqvit.parallel.hostlist import first_host, tasks_on_node

log = logging.getLogger(__name__)

SP_METHODS = ("ulysses", "lss", "deepspeed-ulysses", "ring", "ulysses-lss", "ulysses-ring")
# Methods that scatter heads across the sequence-parallel ranks: the head count must divide.
HEAD_SCATTERING = ("ulysses", "deepspeed-ulysses")
# Ulysses over parallel.sp_inner adjacent ranks, then LSS or ring over the rest: sp_inner divides the heads.
TWO_LEVEL = ("ulysses-lss", "ulysses-ring")
UNEVEN_MODES = ("error", "pad")
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class ProcessGrid:
    """Where this process sits in the P x D grid of ranks, and its groups (None: one process).

    `device` is the training device of this process, and the device of every tensor it hands to a
    collective: the one place that knows it (init_distributed pins it).
    """

    rank: int = 0
    world_size: int = 1
    sp: int = 1
    local_rank: int = 0
    sp_group: object = None
    device: torch.device = torch.device("cpu")
    sp_inner: int = 1  # > 1: two-level methods (module docstring)
    inner_group: object = None
    outer_group: object = None

    @property
    def dp(self) -> int:
        return self.world_size // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sp_ranks(self) -> list[int]:
        start = self.dp_rank * self.sp
        return list(range(start, start + self.sp))

    def dp_ranks(self) -> list[int]:
        return list(range(self.sp_rank, self.world_size, self.sp))


SINGLE = ProcessGrid()


def launcher_env(environ=None) -> dict:
    """rank, world_size, local_rank, local_world_size, master_addr, master_port from torchrun or srun.

    Without a launcher: one process (world size 1). A value that is not an integer, or ranks
    that do not fit the sizes, raise SeqvitError naming the variable.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also a hand-set environment)
        rank_var, world_var = "RANK", "WORLD_SIZE"
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE", minimum=1)
        local_rank_var = "LOCAL_RANK" if "LOCAL_RANK" in env else "RANK"
        local_world_var = "LOCAL_WORLD_SIZE" if "LOCAL_WORLD_SIZE" in env else "WORLD_SIZE"
        local_rank = _env_int(env, local_rank_var)
        local_world = _env_int(env, local_world_var, minimum=1)
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:  # srun
        rank_var, world_var = "SLURM_PROCID", "SLURM_NTASKS"
        rank, world = _env_int(env, "SLURM_PROCID"), _env_int(env, "SLURM_NTASKS", minimum=1)
        local_rank_var = "SLURM_LOCALID"
        local_rank = _env_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        local_world_var, local_world = _slurm_local_world(env, world)
    else:
        return {
            "rank": 0,
            "world_size": 1,
            "local_rank": 0,
            "local_world_size": 1,
            "master_addr": None,
            "master_port": None,
        }
    if rank >= world:
        raise SeqvitError(
            f"{rank_var}={rank} is not below {world_var}={world}: the launcher's environment is inconsistent"
        )
    if local_world > world:
        raise SeqvitError(
            f"{local_world_var}={env.get(local_world_var)!r} gives {local_world} processes on this node, more than "
            f"{world_var}={world} in all"
        )
    if local_rank >= local_world:
        raise SeqvitError(
            f"{local_rank_var}={local_rank} is not below the {local_world} processes on this node "
            f"({local_world_var}={env.get(local_world_var)!r})"
        )
    addr = env.get("MASTER_ADDR") or None
    if addr is None and world > 1:
        addr = _first_slurm_host(env) or "127.0.0.1"
    if "MASTER_PORT" in env:
        port = _env_int(env, "MASTER_PORT", minimum=1, maximum=65535)
    elif "SLURM_JOB_ID" in env:  # jobs sharing a node (a sweep on a small cluster) must not share a port
        port = 20000 + _env_int(env, "SLURM_JOB_ID") % 40000
    else:
        port = DEFAULT_PORT
    return {
        "rank": rank,
        "world_size": world,
        "local_rank": local_rank,
        "local_world_size": local_world,
        "master_addr": addr,
        "master_port": port,
    }


def _env_int(env, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    value = env[name]
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SeqvitError(f"launcher variable {name}={value!r} is not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise SeqvitError(f"launcher variable {name}={value!r} must be {bounds}")
    return number


# The step's own layout first: srun sets SLURM_STEP_TASKS_PER_NODE (and overwrites
# SLURM_TASKS_PER_NODE) for the step, while SLURM_NTASKS_PER_NODE is the job's request and can
# differ from a smaller step inside the allocation.
_TASKS_PER_NODE_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")


def _slurm_local_world(env, world: int) -> tuple[str, int]:
    """(variable, tasks on this node) under srun; the whole world when Slurm does not say."""
    node_id = _env_int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else None
    for name in _TASKS_PER_NODE_VARS:
        if env.get(name):
            return name, tasks_on_node(env[name], node_id, name)
    return "SLURM_NTASKS", world


# The step's node list first: rank 0 runs on the step's first node, which need not be the
# job's first node when a step uses part of the allocation.
_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


def _first_slurm_host(env) -> str | None:
    """First host of the Slurm node list (pure Python; malformed lists raise SeqvitError)."""
    for name in _NODELIST_VARS:
        if env.get(name):
            return first_host(env[name], name)
    return None


def check_world(world_size: int, sp: int, local_world_size: int | None = None) -> None:
    if sp < 1:
        raise SeqvitError(f"config key parallel.sp: {sp} must be at least 1")
    if world_size % sp:
        raise SeqvitError(
            f"config key parallel.sp: {sp} does not divide the {world_size} processes (world = sp x data-parallel "
            f"replicas); launch a multiple of {sp} processes (torchrun --nproc-per-node {sp}) or set parallel.sp "
            f"to a divisor of {world_size}"
        )
    if local_world_size and local_world_size > 1 and sp > local_world_size:
        log.warning(
            "parallel.sp=%d spans nodes (%d processes per node): every attention layer then exchanges "
            "activations over the network",
            sp,
            local_world_size,
        )


def build_groups(
    sp: int, local_world_size: int | None = None, device: torch.device = SINGLE.device, sp_inner: int = 1
) -> ProcessGrid:
    """Sequence-parallel groups over an initialized default process group (every rank must call this).

    device: the training device of this process (ProcessGrid.device); the default group must have a
    backend for it. sp_inner > 1 also builds the inner and outer groups of the two-level methods.
    """
    if not dist.is_initialized():
        raise SeqvitError("build_groups needs torch.distributed initialized (init_distributed does it)")
    rank, world = dist.get_rank(), dist.get_world_size()
    check_world(world, sp, local_world_size)
    check_group_device(device)
    # new_group must be called by every rank for every group, in the same order.
    sp_group = None
    for d in range(world // sp):
        group = dist.new_group(list(range(d * sp, (d + 1) * sp)))
        if rank // sp == d:
            sp_group = group
    inner_group, outer_group = two_level_groups(sp, sp_inner) if sp_inner > 1 else (None, None)
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return ProcessGrid(
        rank=rank,
        world_size=world,
        sp=sp,
        local_rank=local_rank,
        sp_group=sp_group,
        device=device,
        sp_inner=sp_inner,
        inner_group=inner_group,
        outer_group=outer_group,
    )


def two_level_ranks(world_size: int, sp: int, sp_inner: int) -> tuple[list[list[int]], list[list[int]]]:
    """(inner groups, outer groups) as rank lists: inner = sp_inner adjacent ranks, outer = same inner index."""
    if sp_inner < 1 or sp % sp_inner or world_size % sp:
        raise SeqvitError(
            f"config key parallel.sp_inner: {sp_inner} must divide parallel.sp ({sp}), which must divide the "
            f"{world_size} processes"
        )
    outer = sp // sp_inner
    inner_groups, outer_groups = [], []
    for first in range(0, world_size, sp):
        inner_groups += [list(range(first + o * sp_inner, first + (o + 1) * sp_inner)) for o in range(outer)]
        outer_groups += [list(range(first + i, first + sp, sp_inner)) for i in range(sp_inner)]
    return inner_groups, outer_groups


def two_level_groups(sp: int, sp_inner: int) -> tuple[object, object]:
    """This rank's (inner group, outer group); a collective call: every rank of the world makes it."""
    rank, world = dist.get_rank(), dist.get_world_size()
    inner_ranks, outer_ranks = two_level_ranks(world, sp, sp_inner)
    mine: dict = {}
    # new_group must be called by every rank for every group, in the same order.
    for kind, lists in (("inner", inner_ranks), ("outer", outer_ranks)):
        for ranks in lists:
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[kind] = group
    return mine["inner"], mine["outer"]


# The process-group backend per training device type. On a GPU, NCCL (RCCL on ROCm builds)
# carries the tensors of training, and it has no backend for host tensors ("No backend type
# associated with device type cpu"); gloo beside it serves the host, so that object collectives
# (checkpoint agreement) and barriers run on host memory and a host tensor handed to a
# collective by a library still works.
PROCESS_GROUP_BACKENDS = {"cpu": "cpu:gloo", "cuda": "cpu:gloo,cuda:nccl"}


def backend_for(device_type: str) -> str:
    """The backend string of init_process_group for training on `device_type` (cpu, cuda)."""
    if device_type not in PROCESS_GROUP_BACKENDS:
        raise SeqvitError(f"config key train.device: no process-group backend for {device_type!r}; use cpu or cuda")
    return PROCESS_GROUP_BACKENDS[device_type]


def backend_devices(group=None) -> list[str]:
    """Device types for which `group` (None: the default group) has a backend."""
    config = dist.get_backend_config(group)
    if ":" in config:  # "cpu:gloo,cuda:nccl"
        return [pair.split(":")[0] for pair in config.split(",")]
    return list(dist.Backend.backend_capability.get(config, []))


def check_group_device(device: torch.device, group=None) -> None:
    """Refuse a process group that has no backend for the training device (its collectives would fail)."""
    devices = backend_devices(group)
    if device.type not in devices:
        raise SeqvitError(
            f"the process group ({dist.get_backend_config(group)!r}) has no backend for {device.type} tensors, the "
            f"training device (config key train.device); initialize it with "
            f"init_process_group({backend_for(device.type)!r}), or let seqvit create it"
        )


def _pin_device(device_type: str, local_rank: int) -> torch.device:
    """This process's training device; a GPU is chosen by the local rank and made current."""
    if device_type == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise SeqvitError("config key train.device: cuda asked for, but torch sees no GPU; use auto or cpu")
    # among the GPUs this process sees: the node's (torchrun) or only its own (srun --gpus-per-task=1)
    index = local_rank % count
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(
    sp: int, device_type: str = "cpu", timeout_s: float = 1800.0, environ=None, sp_inner: int = 1
) -> ProcessGrid:
    """ProcessGrid of this process from the launcher's environment; initializes torch.distributed and groups.

    device_type: where training runs (cpu, cuda); it picks the backend (backend_for) and, on a
    GPU, the device of this rank (local rank modulo the visible GPUs), recorded as ProcessGrid.device.
    World size 1 with sp 1 needs no process group; sp > 1 in one process is an error that names
    the launch command.
    """
    info = launcher_env(environ)
    world = info["world_size"]
    backend = backend_for(device_type)
    if world == 1:
        if sp != 1:
            raise SeqvitError(
                f"config key parallel.sp: {sp} needs {sp} processes, but this is a single process; launch with "
                f"torchrun --nproc-per-node {sp} -m seqvit.cli train ... (or srun -n {sp} seqvit train ...)"
            )
        device = _pin_device(device_type, info["local_rank"])
        if dist.is_initialized():  # a group the caller made: it must carry tensors of this device
            check_group_device(device)
        return SINGLE if device == SINGLE.device else replace(SINGLE, device=device)
    check_world(world, sp, info["local_world_size"])
    device = _pin_device(device_type, info["local_rank"])
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", info["master_addr"])
        os.environ.setdefault("MASTER_PORT", str(info["master_port"]))
        dist.init_process_group(
            backend, rank=info["rank"], world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return build_groups(sp, info["local_world_size"], device, sp_inner=sp_inner if sp > 1 else 1)


def rank_seed(seed: int, layout: ProcessGrid) -> int:
    """Seed of this rank's own random stream, from the run seed and its (dp rank, sp rank).

    Ranks hold different samples (data parallel) and token segments (sequence parallel): their
    dropout masks must be independent draws, not copies of one stream. SeedSequence's spawn
    keys give child streams that stay independent for any run seeds.
    """
    sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(layout.dp_rank, layout.sp_rank))
    return int(sequence.generate_state(1, np.uint64)[0])


def check_layout(
    *,
    num_tokens: int,
    num_heads: int,
    sp: int,
    method: str,
    world_size: int | None = None,
    batch_size: int | None = None,
    uneven: str = "error",
    sp_inner: int = 1,
) -> None:
    """Reject an impossible combination before training, naming the config key and the fix."""
    if method not in SP_METHODS:
        raise SeqvitError(f"config key parallel.sp_method: {method!r} is not one of {SP_METHODS}")
    if uneven not in UNEVEN_MODES:
        raise SeqvitError(f"config key parallel.uneven: {uneven!r} is not one of {UNEVEN_MODES}")
    if sp_inner < 1:
        raise SeqvitError(f"config key parallel.sp_inner: {sp_inner} must be at least 1 (1: not two-level)")
    if sp_inner > 1 and method not in TWO_LEVEL:
        raise SeqvitError(
            f"config key parallel.sp_inner: {sp_inner} is for the two-level methods {TWO_LEVEL}, but "
            f"parallel.sp_method is {method}, one level over all parallel.sp ranks; set parallel.sp_inner=1 (or "
            f"leave it out) or use parallel.sp_method=ulysses-lss or ulysses-ring"
        )
    if world_size is not None:
        check_world(world_size, sp)
    if sp == 1:
        return
    if method in TWO_LEVEL:
        _check_two_level(num_heads=num_heads, sp=sp, method=method, sp_inner=sp_inner)
    if method in HEAD_SCATTERING and num_heads % sp:
        divisors = [p for p in range(1, num_heads + 1) if num_heads % p == 0]
        raise SeqvitError(
            f"config keys model.num_heads ({num_heads}) and parallel.sp ({sp}): {method} gives every rank "
            f"num_heads / sp heads, so sp must divide the head count; use parallel.sp in {divisors}, a head count "
            f"divisible by {sp}, or parallel.sp_method=lss (no constraint on heads)"
        )
    if num_tokens % sp:
        if uneven == "error":
            divisors = [p for p in range(2, min(num_tokens, 64) + 1) if num_tokens % p == 0]
            raise SeqvitError(
                f"config key parallel.sp: the sequence of {num_tokens} tokens (grid cells / patch size^2) does not "
                f"split into {sp} equal segments; use parallel.sp in {divisors}, another patch size, or "
                f"parallel.uneven=pad (pads the last segments and leaves the padding out of attention)"
            )
        length = -(-num_tokens // sp)
        if (sp - 1) * length >= num_tokens:
            raise SeqvitError(
                f"config key parallel.sp: {num_tokens} tokens over {sp} ranks in segments of {length} leave the last "
                f"rank no token; use fewer ranks (parallel.sp <= {-(-num_tokens // length)})"
            )
    if num_tokens < sp:
        raise SeqvitError(f"config key parallel.sp: {sp} ranks for only {num_tokens} tokens; use fewer ranks")
    if batch_size is not None and world_size is not None:
        dp = world_size // sp
        if batch_size % dp:
            raise SeqvitError(
                f"config key train.batch_size: {batch_size} does not split over {dp} data-parallel replicas "
                f"({world_size} processes / parallel.sp {sp}); use a multiple of {dp}"
            )


def _check_two_level(*, num_heads: int, sp: int, method: str, sp_inner: int) -> None:
    inner = [i for i in range(2, sp) if sp % i == 0 and num_heads % i == 0]
    fix = f"use parallel.sp_inner in {inner}" if inner else "no sp_inner fits: use parallel.sp_method=lss or ring"
    if sp_inner == 1:
        raise SeqvitError(
            f"config key parallel.sp_inner: {method} needs the size of its inner Ulysses group (> 1, dividing "
            f"parallel.sp {sp} and model.num_heads {num_heads}); {fix}"
        )
    if sp % sp_inner:
        raise SeqvitError(
            f"config keys parallel.sp_inner ({sp_inner}) and parallel.sp ({sp}): the inner groups tile each "
            f"sequence-parallel group, so sp_inner must divide sp; {fix}"
        )
    if sp_inner == sp:
        raise SeqvitError(
            f"config key parallel.sp_inner: {sp_inner} = parallel.sp leaves no outer level; use "
            f"parallel.sp_method=ulysses (the same exchange), or {fix}"
        )
    if num_heads % sp_inner:
        raise SeqvitError(
            f"config keys model.num_heads ({num_heads}) and parallel.sp_inner ({sp_inner}): the inner Ulysses "
            f"exchange gives every rank num_heads / sp_inner heads, so sp_inner must divide the head count; {fix}"
        )


def segment_length(num_tokens: int, sp: int) -> int:
    """Tokens per rank (the padded length when sp does not divide num_tokens)."""
    return -(-num_tokens // sp)


def segment_bounds(num_tokens: int, sp: int, sp_rank: int) -> tuple[int, int]:
    """[start, stop) of the tokens that sequence-parallel rank `sp_rank` holds.

    Equal segments when sp divides num_tokens; otherwise segments of ceil(N / sp) with a shorter
    last one (parallel.uneven=pad), so the padding sits at the end of the gathered sequence.
    """
    length = segment_length(num_tokens, sp)
    start = min(sp_rank * length, num_tokens)
    return start, min(start + length, num_tokens)
