"""A ClimaX-style Vision Transformer that forecasts the normalized tendency of every channel.

Reading order of forward():
  tokens [B, C, L, P*P]
  -> per-channel patch embedding (one linear map per channel)      [B, C, L, D]
  -> + channel (variable) embedding
  -> channel aggregation: one learned query per token attends over its C channel embeddings
                                                                   [B, L, D]
  -> + fixed 2-D sin-cos position embedding + lead-time embedding
  -> transformer blocks (pre-norm; self-attention is the only op that mixes tokens)
  -> norm + linear head to C * P*P values per token                [B, C, L, P*P]

The output is the tendency (target - input) in normalized units; a forecast is input + output.

Sequence-parallel seam: every op except `attention` works token by token, so a rank may hold
only tokens [s0, s1) and call forward(..., token_offset=s0); the position embedding is built
for that segment only (from per-axis tables) and each block has exactly one attention call site,
whose backend may be a callable that gathers the sequence across ranks.

Attention pattern (model.attention_pattern): full, every token attends to every token; window,
Swin-style windows on the token grid, shifted every other block (model/window.py). Window
attention needs the whole token grid in one process, so it does not run sequence parallel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from seqvit.errors import SeqvitError
from seqvit.model.attention import attention
from seqvit.model.window import PATTERNS, BlockWindows, check_window, layouts, window_attention
from seqvit.patches import check_patch_size


def sincos_axis_tables(grid_rows: int, grid_cols: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of the fixed 2-D sin-cos embedding: float32 [rows, dim/2] and [cols, dim/2].

    The embedding of the token in patch row r and column c is the row table's row r followed by
    the column table's row c (MAE/ClimaX style): per axis, sin then cos of position x omega_k,
    omega_k = 10000^(-k / (dim/4)). Computed in float64 and rounded once to float32, so the values
    are those of the whole table without ever building it (4 GB at a million tokens).
    """
    if dim % 4:
        raise SeqvitError(f"config key model.embed_dim: {dim} must be divisible by 4 for 2-D sin-cos positions")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def encode(count):
        angles = np.outer(np.arange(count, dtype=np.float64), omega)
        return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32))

    return encode(grid_rows), encode(grid_cols)


def sincos_position_embedding(grid_rows: int, grid_cols: int, dim: int, start: int = 0, stop=None) -> torch.Tensor:
    """Rows [start, stop) of the fixed 2-D sin-cos embedding [rows*cols, dim] (row-major like the
    tokens), float32; only those rows are built."""
    stop = grid_rows * grid_cols if stop is None else stop
    if not 0 <= start <= stop <= grid_rows * grid_cols:
        raise SeqvitError(f"positions [{start}, {stop}) are outside the {grid_rows} x {grid_cols} patches of the grid")
    row_table, col_table = sincos_axis_tables(grid_rows, grid_cols, dim)
    return _positions(row_table, col_table, start, stop)


def _positions(row_table: torch.Tensor, col_table: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    index = torch.arange(start, stop, device=row_table.device)
    cols = col_table.shape[0]
    return torch.cat((row_table[index // cols], col_table[index % cols]), dim=1)


class ChannelPatchEmbedding(nn.Module):
    """A separate linear map from P*P pixels to D for each channel (ClimaX's per-variable embedding)."""

    def __init__(self, channels: int, pixels: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, pixels, dim) / math.sqrt(pixels))
        self.bias = nn.Parameter(torch.zeros(channels, dim))

    def forward(self, tokens):  # [B, C, L, pp] -> [B, C, L, D]
        return torch.einsum("bclp,cpd->bcld", tokens, self.weight) + self.bias[None, :, None, :]


class ChannelAggregation(nn.Module):
    """Multi-head cross-attention of one learned query over the C channel embeddings of each token.

    With a single query the keys need not be formed: per head, q . (W_k e) = (W_k^T q) . e, and
    since the attention weights sum to one, values can be projected after the weighted sum.
    Same result as projecting every channel embedding, at a fraction of the cost.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(num_heads, dim // num_heads))
        self.key = nn.Linear(dim, dim, bias=False)  # a key bias would shift all channels alike
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):  # [B, C, L, D] -> [B, L, D]
        batch, channels, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        key_weight = self.key.weight.reshape(self.num_heads, head_dim, dim)
        probe = torch.einsum("hk,hkd->hd", self.query, key_weight) / math.sqrt(head_dim)
        weights = torch.softmax(torch.einsum("bcld,hd->blhc", x, probe), dim=-1)
        mixed = torch.einsum("blhc,bcld->blhd", weights, x)
        value_weight = self.value.weight.reshape(self.num_heads, head_dim, dim)
        values = torch.einsum("blhd,hkd->blhk", mixed, value_weight) + self.value.bias.reshape(self.num_heads, head_dim)
        return self.out(values.reshape(batch, tokens, dim))


class LeadTimeEmbedding(nn.Module):
    """Lead time (hours) -> D, linear in days so 6 h and 10 days sit on a similar scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(1, dim)

    def forward(self, lead_hours):  # [B] -> [B, 1, D]
        days = lead_hours.to(self.linear.weight.dtype).reshape(-1, 1) / 24.0
        return self.linear(days)[:, None, :]


class Block(nn.Module):
    """Pre-norm transformer block; `attention` is its only token-mixing op.

    Dropout (model.dropout) acts on the attention probabilities, the projection and the MLP. Under
    sequence parallelism each rank draws its masks from its own stream (train/engine.py), so the
    masks of different token segments, heads or query rows are independent, as in one process.
    A fused kernel (sdpa, flash) draws attention dropout inside the kernel: the same distribution,
    but not the masks one process would draw; the math kernel draws it with F.dropout.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        attention_backend,
        window: BlockWindows | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention_backend = attention_backend
        self.window = window  # None: full attention
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x):  # [B, S, D]
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, seq, 3, self.num_heads, dim // self.num_heads).unbind(2)
        dropout_p = self.dropout if self.training else 0.0
        if self.window is None:
            mixed = attention(q, k, v, backend=self.attention_backend, dropout_p=dropout_p)
        else:
            mixed = window_attention(q, k, v, self.window, backend=self.attention_backend, dropout_p=dropout_p)
        x = x + self.proj_dropout(self.proj(mixed.reshape(batch, seq, dim)))
        return x + self.mlp(self.norm2(x))


class ForecastViT(nn.Module):
    # buffers (register_buffer); nn.Module's __getattr__ types them Tensor | Module
    position_rows: torch.Tensor
    position_cols: torch.Tensor

    def __init__(
        self,
        channels: int,
        patch_size: int,
        grid_shape,
        embed_dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_backend="sdpa",
        attention_pattern: str = "full",
        window_size: int | None = None,
    ):
        super().__init__()
        check_patch_size(grid_shape, patch_size)
        if attention_pattern not in PATTERNS:
            raise SeqvitError(
                f"config key model.attention_pattern: unknown pattern {attention_pattern!r}; use one of {PATTERNS}"
            )
        if embed_dim % num_heads:
            raise SeqvitError(
                f"config keys model.embed_dim ({embed_dim}) must be divisible by model.num_heads ({num_heads})"
            )
        self.channels = channels
        self.patch_size = patch_size
        self.grid_shape = tuple(int(n) for n in grid_shape)
        pixels = patch_size * patch_size
        grid_rows, grid_cols = self.grid_shape[0] // patch_size, self.grid_shape[1] // patch_size
        self.num_tokens = grid_rows * grid_cols
        self.token_grid = (grid_rows, grid_cols)
        self.attention_pattern = attention_pattern
        windows: list[BlockWindows | None] = [None] * depth
        if attention_pattern == "window":
            context = f" of patch size {patch_size} on the {self.grid_shape[0]} x {self.grid_shape[1]} grid"
            check_window(grid_rows, grid_cols, window_size, context)
            assert window_size is not None  # check_window refused anything else
            windows = [*layouts(grid_rows, grid_cols, window_size, depth)]

        self.patch_embedding = ChannelPatchEmbedding(channels, pixels, embed_dim)
        self.channel_embedding = nn.Parameter(torch.zeros(channels, embed_dim))
        self.aggregation = ChannelAggregation(embed_dim, num_heads)
        # the per-axis halves of the position table: each rank builds its tokens' rows from them (embed)
        row_table, col_table = sincos_axis_tables(grid_rows, grid_cols, embed_dim)
        self.register_buffer("position_rows", row_table, persistent=False)
        self.register_buffer("position_cols", col_table, persistent=False)
        self.lead_embedding = LeadTimeEmbedding(embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, dropout, attention_backend, window) for window in windows
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, channels * pixels)
        self.activation_checkpointing = False  # set by training (train.activation_checkpointing)
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.channel_embedding, std=0.02)
        nn.init.trunc_normal_(self.aggregation.query, std=1.0)
        # A zero head starts training from persistence (zero tendency).
        nn.init.zeros_(self.head.weight)

    def set_attention_backend(self, backend) -> None:
        for block in self.blocks:
            block.attention_backend = backend

    def embed(self, tokens, lead_hours, token_offset: int = 0):
        """Per-token part before the blocks: [B, C, L_local, P*P] -> [B, L_local, D].

        token_offset: index of the first local token in the global sequence (sequence parallel).
        """
        batch, channels, local_tokens, pixels = tokens.shape
        if channels != self.channels or pixels != self.patch_size**2:
            raise SeqvitError(
                f"model expects tokens [batch, {self.channels}, tokens, {self.patch_size**2}], got {tuple(tokens.shape)}"
            )
        if token_offset < 0 or token_offset + local_tokens > self.num_tokens:
            raise SeqvitError(
                f"token segment [{token_offset}, {token_offset + local_tokens}) is outside the "
                f"{self.num_tokens} tokens of the grid"
            )
        x = self.patch_embedding(tokens) + self.channel_embedding[None, :, None, :]
        x = self.aggregation(x)
        positions = _positions(self.position_rows, self.position_cols, token_offset, token_offset + local_tokens)
        x = x + positions[None].to(x.dtype)
        return x + self.lead_embedding(lead_hours)

    # Learned tables and queries: shrinking them towards zero only erases what tells channels apart.
    EMBEDDING_TABLES = ("channel_embedding", "aggregation.query")

    def weight_decay_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight decay on the matrices of linear maps only; none on biases,
        norms and embedding tables (as ClimaX and nanoGPT do)."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in self.named_parameters():
            exempt = param.ndim < 2 or name in self.EMBEDDING_TABLES
            (no_decay if exempt else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def forward(self, tokens, lead_hours, token_offset: int = 0):
        """Normalized tendency [B, C, L_local, P*P] for input tokens [B, C, L_local, P*P]."""
        if self.attention_pattern == "window" and (token_offset or tokens.shape[2] != self.num_tokens):
            raise SeqvitError(
                f"model.attention_pattern: window needs all {self.num_tokens} tokens of the grid in one process, got "
                f"tokens [{token_offset}, {token_offset + tokens.shape[2]}); use parallel.sp: 1 or "
                "model.attention_pattern: full"
            )
        x = self.embed(tokens, lead_hours, token_offset)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only block inputs; recompute the rest (attention included) in the backward pass
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        out = self.head(self.norm(x))  # [B, L, C*pp]
        batch, local_tokens, _ = out.shape
        return out.reshape(batch, local_tokens, self.channels, -1).permute(0, 2, 1, 3)


MODEL_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "dropout", "attention_pattern", "window_size")


def build_model(model_cfg: dict, channels: int, patch_size: int, grid_shape) -> ForecastViT:
    """The model described by config section `model` for a given data layout."""
    kwargs = {key: model_cfg[key] for key in MODEL_KEYS if key in model_cfg}
    return ForecastViT(channels, patch_size, grid_shape, attention_backend=model_cfg.get("attention", "sdpa"), **kwargs)
