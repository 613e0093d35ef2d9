"""DeepSpeed's own Ulysses, deepspeed.sequence.layer.DistributedAttention, behind our backend seam.

Selected with parallel.sp_method=deepspeed-ulysses (needs pip install 'seqvit[deepspeed]'), so
our Ulysses and DeepSpeed's can be compared on the same run. DeepSpeed exchanges Q, K, V and the
output in four separate all-to-alls per layer (forward; four more backward), the same bytes as
ours in twice as many collectives. Its collectives go through deepspeed.comm, which we
initialize over the process group torch.distributed already has (gloo on CPU, nccl/rccl on GPU).

Our tensors are batch-first [B, S, H, d], so DistributedAttention gets scatter_idx=2 (heads),
gather_idx=1 (sequence) and batch_dim_idx=0. Padding of uneven sequences is ours (sequence.py);
the head count must divide P as for our Ulysses (DeepSpeed's uneven-head path needs its own
Megatron-style groups, which seqvit does not set up).
"""

from __future__ import annotations

import logging

import torch.distributed as dist

from seqvit.errors import SeqvitError
from seqvit.parallel.sequence import SequenceParallelAttention

log = logging.getLogger(__name__)


def ensure_deepspeed_comm():
    """deepspeed.comm bound to the existing torch.distributed process group; returns DistributedAttention."""
    try:
        import deepspeed
        import deepspeed.comm as ds_comm
        from deepspeed.sequence.layer import DistributedAttention
    except ImportError as exc:
        raise SeqvitError(
            "config key parallel.sp_method: deepspeed-ulysses needs DeepSpeed (pip install 'seqvit[deepspeed]'); "
            f"or use parallel.sp_method=ulysses, the same algorithm without it ({exc})"
        ) from exc
    if not ds_comm.is_initialized():
        if not dist.is_initialized():
            raise SeqvitError("deepspeed-ulysses needs torch.distributed initialized first (groups.init_distributed)")
        # The CPU accelerator would JIT-compile (g++) a shared-memory all-reduce for inference when deepspeed.comm
        # starts; sequence parallelism never uses it, so it is marked unavailable (deepspeed.ops documents
        # __compatible_ops__ as an editable cache).
        if deepspeed.accelerator.get_accelerator().device_name() == "cpu":
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        ds_comm.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
    return DistributedAttention


class DeepSpeedUlyssesAttention(SequenceParallelAttention):
    method = "deepspeed-ulysses"

    def __init__(self, group, num_tokens: int, num_heads: int, kernel: str = "sdpa", uneven: str = "error"):
        super().__init__(group, num_tokens, num_heads, kernel=kernel, uneven=uneven)
        distributed_attention = ensure_deepspeed_comm()
        self.distributed = distributed_attention(
            self.local_attention, group if group is not None else dist.group.WORLD, scatter_idx=2, gather_idx=1
        )

    def exchange_attend(self, q, k, v, dropout_p: float):
        return self.distributed(q, k, v, 0, None, dropout_p=dropout_p)  # batch_dim_idx=0: [B, S, H, d]
