"""Window attention on the token grid (Swin style), for model.attention_pattern: window.

Tokens are row-major on a grid of R x C tokens (R = nlat/p latitude rows, C = nlon/p longitude
columns). Attention is restricted to square windows of w x w tokens; every other block shifts the
windows by s = w // 2 tokens along both axes, so information crosses window edges from one block
to the next. The two axes are not alike:

- longitude is periodic: a shifted window that runs past the east edge continues at the west
  edge (a cyclic roll of the columns by s before partitioning and back after);
- latitude ends at the poles: the shifted layout has bands of s, w, ..., w, w - s rows, so its
  first and last bands are smaller windows that stop at the poles. No window holds both northern
  and southern edge rows, and no mask is needed, so every kernel (flash-attn included, which
  takes none) runs unchanged.

An axis with a single window is not shifted: a window covering the whole grid is then full
attention in every block. The grid must be a whole number of windows along both axes (refused
otherwise, with the window sizes that fit): no padding.

The windows are formed with reshapes and attended as one batch per band height (at most three
kernel calls per block), so the cost is O(N w^2), never O(N^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqvit.errors import SeqvitError
from seqvit.model.attention import attention

PATTERNS = ("full", "window")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_window(token_rows: int, token_cols: int, window_size, context: str = "") -> None:
    """Refuse a window size that is not a whole number of windows along both axes of the token grid."""
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise SeqvitError(
            f"config key model.window_size: {window_size!r} must be a positive integer (tokens per side of a "
            "square window) when model.attention_pattern is window"
        )
    if token_rows % window_size or token_cols % window_size:
        fits = sorted(set(_divisors(token_rows)) & set(_divisors(token_cols)))
        raise SeqvitError(
            f"config key model.window_size: {window_size} does not divide the token grid of {token_rows} x "
            f"{token_cols} tokens (latitude x longitude{context}); use one of {fits}, or model.attention_pattern: full"
        )


@dataclass(frozen=True)
class BlockWindows:
    """Where the windows of one block lie on a token grid of rows x cols tokens."""

    rows: int
    cols: int
    size: int
    shifted: bool

    def __post_init__(self):
        check_window(self.rows, self.cols, self.size)

    @property
    def row_shift(self) -> int:
        return self.size // 2 if self.shifted and self.rows > self.size else 0

    @property
    def col_shift(self) -> int:
        return self.size // 2 if self.shifted and self.cols > self.size else 0

    def bands(self) -> list[tuple[int, int, int]]:
        """(first row, stop row, band height) of each run of equally high bands of windows, north to south."""
        shift = self.row_shift
        if not shift:
            return [(0, self.rows, self.size)]
        south = self.rows - (self.size - shift)
        return [(0, shift, shift), (shift, south, self.size), (south, self.rows, self.size - shift)]

    def attention_pairs(self) -> int:
        """Query-key pairs attended per head: the sum over windows of (tokens in the window)^2."""
        windows_per_band = self.cols // self.size
        return sum(
            (stop - start) // height * windows_per_band * (height * self.size) ** 2
            for start, stop, height in self.bands()
        )


def layouts(rows: int, cols: int, size: int, depth: int) -> list[BlockWindows]:
    """The window layout of each of `depth` blocks: unshifted, shifted, unshifted, ..."""
    return [BlockWindows(rows, cols, size, shifted=bool(index % 2)) for index in range(depth)]


def window_attention(q, k, v, layout: BlockWindows, backend="sdpa", dropout_p: float = 0.0):
    """attention() within the windows of `layout`, for q, k, v [batch, rows*cols, heads, head_dim]
    in row-major token order; returns the same shape and order."""
    batch, seq, heads, head_dim = q.shape
    rows, cols, size = layout.rows, layout.cols, layout.size
    if seq != rows * cols:
        raise SeqvitError(
            f"window attention needs the whole token grid of {rows} x {cols} = {rows * cols} tokens, got {seq}"
        )
    grids = [t.reshape(batch, rows, cols, heads, head_dim) for t in (q, k, v)]
    if layout.col_shift:  # periodic in longitude: the window past the east edge wraps to the west
        grids = [g.roll(-layout.col_shift, dims=2) for g in grids]
    bands_out = []
    for start, stop, height in layout.bands():
        wq, wk, wv = (_partition(g[:, start:stop], height, size) for g in grids)
        mixed = attention(wq, wk, wv, backend=backend, dropout_p=dropout_p)
        bands_out.append(_merge(mixed, batch, (stop - start) // height, cols // size, height, size))
    out = bands_out[0] if len(bands_out) == 1 else torch.cat(bands_out, dim=1)
    if layout.col_shift:
        out = out.roll(layout.col_shift, dims=2)
    return out.reshape(batch, seq, heads, head_dim)


def _partition(band, height: int, width: int):
    """[B, nb*height, nw*width, H, d] -> [B*nb*nw, height*width, H, d]: one batch entry per window."""
    batch, band_rows, cols, heads, head_dim = band.shape
    windows = band.reshape(batch, band_rows // height, height, cols // width, width, heads, head_dim)
    return windows.permute(0, 1, 3, 2, 4, 5, 6).reshape(-1, height * width, heads, head_dim)


def _merge(windows, batch: int, n_bands: int, n_windows: int, height: int, width: int):
    """Inverse of _partition: [B*nb*nw, height*width, H, d] -> [B, nb*height, nw*width, H, d]."""
    heads, head_dim = windows.shape[-2:]
    grid = windows.reshape(batch, n_bands, n_windows, height, width, heads, head_dim)
    return grid.permute(0, 1, 3, 2, 4, 5, 6).reshape(batch, n_bands * height, n_windows * width, heads, head_dim)
