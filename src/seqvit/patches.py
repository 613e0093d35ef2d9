"""Patch geometry shared by the tokens (data) and the model, which must not depend on each other."""

from __future__ import annotations

from seqvit.errors import SeqvitError


def check_patch_size(grid_shape, patch_size: int) -> None:
    height, width = (int(n) for n in grid_shape)
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise SeqvitError(
            f"config key tokenize.patch_sizes: patch size {patch_size} does not divide the grid "
            f"shape {height} x {width} (latitude x longitude); choose a common divisor of both"
        )
