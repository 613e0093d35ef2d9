"""Every collective of training runs on the training device, through a group with a backend for it.

On a GPU, NCCL has a backend for CUDA tensors only: a collective handed a host tensor fails with
"No backend type associated with device type cpu". This machine has no GPU, so the tests
below check the GPU path in three ways that run on a CPU:

- they reproduce that failure with gloo registered for CUDA only;
- a short sequence-parallel training (P = 2, validation, loss logging, the stop-signal
  agreement after every step, checkpoints and a resume that agrees on them) runs through the
  group seqvit makes for the CPU, which has a backend for the CPU only (`cpu:gloo`), and logs
  every collective: each tensor handed to one lies on the rank's training device, its group
  has a backend for that device, and none was made by a factory call that named no device
  (torch.tensor([...]) without device= is what puts a tensor in host memory on a GPU run;
  tests/recorders.py marks such tensors);
- a group without a backend for the training device is refused before training, with the fix.

Limits: the training device here is the CPU, so "on the training device" cannot fail by
itself; the deviceless-factory mark is what makes the test fail for the bug it guards against,
and it sees only tensors made by torch factory functions (not, say, torch.from_numpy). Whether
NCCL/RCCL accepts the float32 and float64 tensors, and the object collectives through `cpu:gloo`
beside it, is torch's documented behaviour, not run here.
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.distributed as dist

import tiny_runs
from seqvit.errors import SeqvitError
from seqvit.parallel import groups
from seqvit.train.engine import train


@pytest.fixture
def own_group():
    """A one-process group made by the test (an in-memory store); destroyed afterwards."""
    made = []

    def make(backend):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        made.append(backend)

    yield make
    if made and dist.is_initialized():
        dist.destroy_process_group()


def test_a_host_tensor_fails_on_a_group_without_a_host_backend(own_group):
    own_group("cuda:gloo")  # gloo standing in for NCCL: a backend for CUDA tensors only
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.ones(1))


def test_backend_per_device_type():
    assert groups.backend_for("cpu") == "cpu:gloo"
    assert groups.backend_for("cuda") == "cpu:gloo,cuda:nccl"  # nccl is RCCL on ROCm builds
    with pytest.raises(SeqvitError, match="train.device"):
        groups.backend_for("mps")


def test_training_refuses_a_group_without_a_backend_for_its_device(own_group, tmp_path):
    cfg = tiny_runs.config(tmp_path / "results", device="cpu")
    own_group("cuda:gloo")
    with pytest.raises(SeqvitError, match=r"no backend for cpu tensors.*init_process_group\('cpu:gloo'\)"):
        train(cfg, tmp_path / "no-store.zarr", tmp_path / "run", tiny_runs.P, progress=False)


# Where seqvit's own collectives are issued: module:function of the caller (tests/recorders.py).
OWN_COLLECTIVES = {
    "checkpoint:pending": "stop-signal agreement after every step",
    "engine:validation_loss": "validation loss",
    "engine:log_row": "loss logging",
    "checkpoint:_agree": "agreement on the checkpoint a resume starts from",
    "checkpoint:_barrier": "checkpoint saves",
    "lss:": "sequence-parallel attention",
    "deepspeed:": "DeepSpeed's gradient all-reduce",
}


@pytest.mark.workflow  # multi-process training
def test_collectives_of_sequence_parallel_training_run_on_the_training_device(tmp_path):
    cfg = tiny_runs.config(tmp_path / "results", device="cpu")
    cfg = tiny_runs.variant(cfg, parallel={"sp": 2, "sp_method": "lss"})
    tokens = tiny_runs.tokens_store(tmp_path, cfg)
    run = tmp_path / "run"
    # stop at step 4 (a checkpoint), then resume from it to step 8
    runs = [{"cfg": cfg, "out": str(run), "stop_at_step": 4}, {"cfg": cfg, "out": str(run)}]
    tiny_runs.torchrun(2, tokens, runs, "collectives", tmp_path / "spec.json")

    seen = collections.Counter()
    for rank in (0, 1):
        for part in ("4", "end"):
            record = torch.load(run / f"rank{rank}-{part}.pt", weights_only=False)
            assert record["backend"] == groups.backend_for("cpu") == "cpu:gloo"  # the CPU's backend only
            assert record["device"] == "cpu"
            for call in record["calls"]:
                seen[call["caller"]] += 1
                where = f"rank {rank}: {call}"
                assert call["devices"] in ([], [record["device"]]), where
                assert not call["deviceless"], where
                assert call["group_devices"] == ["cpu"], where
                if call["object_device"] is not None:  # object collectives and barriers
                    assert call["object_device"] in call["group_devices"], where
    missing = {caller: what for caller, what in OWN_COLLECTIVES.items() if not any(c.startswith(caller) for c in seen)}
    assert not missing, f"collectives the run did not make: {missing}; seen: {dict(seen)}"
    assert (run / "model.pt").exists()
