"""Process-group layout, checks before training, config keys and attention backends (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqvit.config import load_config
from seqvit.errors import SeqvitError
from seqvit.model.attention import attention, check_backend, flash_available, resolve_backend
from seqvit.parallel import groups
from seqvit.parallel.comm_stats import expected, sent_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_world_is_sp_contiguous_ranks_times_replicas():
    layout = groups.ProcessGrid(rank=5, world_size=8, sp=4)
    assert (layout.dp, layout.sp_rank, layout.dp_rank) == (2, 1, 1)
    assert layout.sp_ranks() == [4, 5, 6, 7]  # contiguous: inside a node
    assert layout.dp_ranks() == [1, 5]  # same segment in each replica
    assert groups.SINGLE.world_size == 1 and not groups.SINGLE.distributed


def test_launcher_environments():
    torchrun = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "3",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "1234",
    }
    assert groups.launcher_env(torchrun) == {
        "rank": 3,
        "world_size": 8,
        "local_rank": 3,
        "local_world_size": 4,
        "master_addr": "n1",
        "master_port": 1234,
    }
    srun = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
        "MASTER_ADDR": "frontier0001",
    }
    info = groups.launcher_env(srun)
    assert (info["rank"], info["world_size"], info["local_rank"], info["local_world_size"]) == (9, 16, 1, 8)
    assert info["master_addr"] == "frontier0001" and info["master_port"] == groups.DEFAULT_PORT
    assert groups.launcher_env({**srun, "SLURM_JOB_ID": "123457"})["master_port"] == 20000 + 123457 % 40000
    assert groups.launcher_env({})["world_size"] == 1


def test_single_process_needs_nothing_and_sp_needs_a_launcher():
    assert groups.init_distributed(1, "cpu", environ={}) is groups.SINGLE
    assert groups.SINGLE.device == torch.device("cpu")
    with pytest.raises(SeqvitError, match=r"needs 4 processes.*torchrun --nproc-per-node 4"):
        groups.init_distributed(4, "cpu", environ={})


def test_a_gpu_asked_for_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no GPU visible, also on a machine with one
    with pytest.raises(SeqvitError, match="train.device: cuda asked for, but torch sees no GPU"):
        groups.init_distributed(1, "cuda", environ={})


@pytest.mark.parametrize("visible, local_rank, index", [(8, 5, 5), (1, 5, 0), (4, 5, 1)])
def test_a_rank_gets_the_gpu_of_its_local_rank_among_those_it_sees(monkeypatch, visible, local_rank, index):
    """torchrun shows every rank the node's GPUs; srun --gpus-per-task=1 shows each its own one, GPU 0."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert groups._pin_device("cuda", local_rank) == torch.device("cuda", index)
    assert made_current == [index]
    assert groups._pin_device("cpu", local_rank) == groups.SINGLE.device


def test_each_rank_has_its_own_random_stream():
    """Seeds differ between the ranks of a 2 x 3 grid, and between runs; they depend on nothing else."""
    world = [groups.ProcessGrid(rank=r, world_size=6, sp=2) for r in range(6)]
    seeds = [groups.rank_seed(0, layout) for layout in world]
    assert len(set(seeds)) == 6
    assert [groups.rank_seed(0, layout) for layout in world] == seeds  # reproducible
    assert not set(seeds) & {groups.rank_seed(1, layout) for layout in world}
    # the stream follows the rank's coordinates (dp rank, sp rank), not the world it sits in
    assert groups.rank_seed(0, groups.ProcessGrid(rank=1, world_size=2, sp=2)) == seeds[1]
    assert groups.rank_seed(-3, groups.SINGLE) >= 0  # any integer seed of the schema


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_tokens": 128, "num_heads": 6, "sp": 4, "method": "ulysses"},
            r"sp must divide the head count.*\[1, 2, 3, 6\].*lss",
        ),
        ({"num_tokens": 128, "num_heads": 6, "sp": 4, "method": "deepspeed-ulysses"}, "sp must divide the head count"),
        (
            {"num_tokens": 130, "num_heads": 4, "sp": 4, "method": "lss"},
            r"130 tokens .* 4 equal segments.*\[2, 5, 10, 13.*uneven=pad",
        ),
        ({"num_tokens": 9, "num_heads": 4, "sp": 4, "method": "lss", "uneven": "pad"}, "leave the last rank no token"),
        (
            {"num_tokens": 128, "num_heads": 4, "sp": 4, "method": "lss", "world_size": 6},
            r"does not divide the 6 processes",
        ),
        (
            {"num_tokens": 128, "num_heads": 4, "sp": 2, "method": "lss", "world_size": 8, "batch_size": 6},
            r"train.batch_size: 6 does not split over 4",
        ),
        ({"num_tokens": 128, "num_heads": 4, "sp": 2, "method": "striped"}, "parallel.sp_method"),
        (
            {"num_tokens": 128, "num_heads": 6, "sp": 8, "method": "ulysses-ring", "sp_inner": 4},
            r"sp_inner \(4\): .*divide the head count; use parallel.sp_inner in \[2\]",
        ),
        (
            {"num_tokens": 128, "num_heads": 6, "sp": 8, "method": "ulysses-lss", "sp_inner": 3},
            r"sp_inner \(3\) and parallel.sp \(8\).*must divide sp",
        ),
        ({"num_tokens": 128, "num_heads": 4, "sp": 4, "method": "ulysses-lss"}, r"needs the size of its inner"),
        ({"num_tokens": 128, "num_heads": 4, "sp": 4, "method": "ulysses-ring", "sp_inner": 4}, "no outer level"),
        (
            {"num_tokens": 128, "num_heads": 4, "sp": 4, "method": "ring", "sp_inner": 2},
            r"sp_inner: 2 is for the two-level",
        ),
        ({"num_tokens": 128, "num_heads": 4, "sp": 4, "method": "ulysses", "sp_inner": 2}, r"sp_method=ulysses-lss"),
    ],
)
def test_invalid_layouts_are_rejected_with_the_fix(kwargs, message):
    with pytest.raises(SeqvitError, match=message):
        groups.check_layout(**kwargs)


def test_valid_layouts_pass():
    groups.check_layout(num_tokens=128, num_heads=6, sp=4, method="lss")  # LSS: any head count
    groups.check_layout(num_tokens=128, num_heads=8, sp=4, method="ulysses", world_size=8, batch_size=4)
    groups.check_layout(num_tokens=130, num_heads=4, sp=4, method="ulysses", uneven="pad")
    groups.check_layout(num_tokens=128, num_heads=6, sp=4, method="ring")  # ring: any head count
    # two-level: the inner degree divides the heads, the outer one (4) need not
    groups.check_layout(num_tokens=128, num_heads=6, sp=8, method="ulysses-lss", sp_inner=2, world_size=16)
    groups.check_layout(num_tokens=130, num_heads=4, sp=8, method="ulysses-ring", sp_inner=4, uneven="pad")


def test_segments_tile_the_sequence():
    assert [groups.segment_bounds(128, 4, r) for r in range(4)] == [(0, 32), (32, 64), (64, 96), (96, 128)]
    assert [groups.segment_bounds(15, 4, r) for r in range(4)] == [(0, 4), (4, 8), (8, 12), (12, 15)]


def test_communication_formulas():
    assert sent_bytes("all_to_all_single", 400, 4) == 300
    assert sent_bytes("all_gather", 100, 4) == 300
    assert sent_bytes("reduce_scatter", 400, 4) == 300
    # 32K tokens, hidden 1024, P = 8, bf16, per rank and layer, worked by hand:
    # a rank holds 4096 tokens; one [4096, 1024] bf16 tensor is 8 MiB, of which 7/8 leave the rank.
    # Ulysses exchanges q, k, v forward and the output back: 4 x 7 MiB = 28 MiB.
    # LSS sends its 8 MiB of K and of V to 7 ranks (all-gather forward) and reduce-scatters the
    # gathered 64 MiB dK and dV (7/8 of them leave): 2 x 56 MiB = 112 MiB.
    n, h, p = 32768, 1024, 8
    mib = 1 << 20
    assert expected("ulysses", 1, n, h, p, 2)["forward"] == (2, 28 * mib)
    assert expected("deepspeed-ulysses", 1, n, h, p, 2)["forward"] == (4, 28 * mib)
    assert expected("lss", 1, n, h, p, 2)["forward"] == (1, 112 * mib)
    assert expected("lss", 1, n, h, p, 2)["backward"] == (1, 112 * mib)
    # ring: its 8 MiB of K and of V go one hop, 7 times: 7 x 16 MiB = 112 MiB; backward K/V again plus dK/dV
    # in fp32 (32 MiB a hop): 7 x 48 MiB
    assert expected("ring", 1, n, h, p, 2) == {"forward": (7, 112 * mib), "backward": (14, 7 * 48 * mib)}
    # ulysses-ring at I = 2 x O = 4: Ulysses among 2 ranks, 4 x 8 MiB of which half leaves = 16 MiB; then a
    # ring of 4 over blocks of 8192 tokens x 512 (the rank's heads): K and V 16 MiB a hop, 3 hops = 48 MiB
    two = expected("ulysses-ring", 1, n, h, p, 2, sp_inner=2)
    assert two["forward"] == (2 + 3, 16 * mib + 48 * mib)
    # ulysses-lss at I = 2 x O = 4: the same Ulysses, then an all-gather of the 16 MiB block to 3 ranks
    assert expected("ulysses-lss", 1, n, h, p, 2, sp_inner=2)["forward"] == (2 + 1, 16 * mib + 48 * mib)


def test_parallel_keys_in_config_and_on_the_command_line():
    cfg = load_config(
        ROOT / "config" / "config.yaml", ["parallel.sp=2", "parallel.sp_method=lss", "model.attention=auto"]
    )
    assert cfg["parallel"]["sp"] == 2 and cfg["parallel"]["sp_method"] == "lss" and cfg["model"]["attention"] == "auto"
    with pytest.raises(SeqvitError, match="parallel.sp_method"):
        load_config(ROOT / "config" / "config.yaml", ["parallel.sp_method=striped"])
    with pytest.raises(SeqvitError, match="parallel.sp"):
        load_config(ROOT / "config" / "config.yaml", ["parallel.sp=0"])


def test_attention_backend_selection():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 33, 4, 8) for _ in range(3))
    assert resolve_backend("auto", q) == "sdpa"  # CPU fp32: flash cannot run
    torch.testing.assert_close(attention(q, k, v, "auto"), attention(q, k, v, "math"), atol=1e-5, rtol=1e-5)
    check_backend("sdpa")
    if not flash_available():
        with pytest.raises(SeqvitError, match=r"flash needs flash-attn.*CUDA or ROCm"):
            check_backend("flash")
    with pytest.raises(SeqvitError, match="unknown attention backend"):
        check_backend("flash9")
