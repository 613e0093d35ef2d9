"""This rank's share of a training step: its samples (data parallel) and its tokens (sequence parallel).

Each rank gets samples [dp_rank * b, (dp_rank + 1) * b) of the global batch, b = batch / D, and
tokens [start, stop) of those (groups.segment_bounds); in training the loader reads just these
(data/loader.SegmentBatches). It runs the whole model on that segment: only attention
communicates. The loss of a rank is the latitude-weighted MSE of its segment with the global
weights (tokenize.token_weights, sliced, never renormalized), scaled by stop - start over the
mean segment length N / P (1 for equal segments), so the mean of the per-rank losses over the
world is the loss of the whole global batch, exactly as one process computes it.

Gradients: each rank's backward pass yields its share of d(sum of per-rank losses); the sum
over all ranks is then the gradient of the sum, and dividing by the world size P x D gives the
gradient of the global loss. So one all-reduce over the world (sequence and data ranks
together, LSS's "double gradient averaging", which Ulysses needs just the same) averages the
gradients. Training leaves that all-reduce to DeepSpeed, which averages over the whole world
(train/engine.py); tests/shard_steps.py writes the same arithmetic out in plain torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqvit.parallel import groups


@dataclass
class StepShare:
    layout: groups.ProcessGrid
    num_tokens: int
    batch_size: int
    weights: torch.Tensor  # [stop - start, P*P], this segment of the global weights

    def __post_init__(self):
        self.start, self.stop = groups.segment_bounds(self.num_tokens, self.layout.sp, self.layout.sp_rank)
        share = (self.stop - self.start) * self.layout.sp
        # 1.0 (and no multiplication at all) when P divides N
        self.loss_scale = None if share == self.num_tokens else share / self.num_tokens
        self.local_batch = self.batch_size // self.layout.dp

    @classmethod
    def of(
        cls, layout: groups.ProcessGrid, num_tokens: int, batch_size: int, global_weights: torch.Tensor
    ) -> "StepShare":
        start, stop = groups.segment_bounds(num_tokens, layout.sp, layout.sp_rank)
        return cls(layout, num_tokens, batch_size, global_weights[start:stop])

    def scaled(self, segment_loss):
        """A loss over this segment alone, scaled so that the world's mean is the global loss."""
        return segment_loss if self.loss_scale is None else segment_loss * self.loss_scale
