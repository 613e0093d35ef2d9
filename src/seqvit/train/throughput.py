"""Training throughput, model FLOPs and model FLOPs utilization (MFU).

Model FLOPs follow PaLM's definition (Chowdhery et al. 2022, appendix B): the matmul FLOPs the
model needs, 2*m*n*k per matmul, with nothing counted twice for recomputation (activation
checkpointing, a fused attention kernel recomputing scores in its backward), so the figure does
not depend on the implementation or the sequence-parallel method. MFU is the achieved model
FLOP/s of one device over that device's peak. Elementwise work (layer norms, softmax, GELU,
adds, biases) is left out, as in the peak it is compared with.

The peak of a device comes from, in order: the config key train.peak_tflops; on a GPU, the
vendor's dense matrix figure in the machine file whose device_names matches its name
(config/machines, the planner's files too); on a CPU, square matmuls timed in this process
(measured_cpu_peak_tflops), the machine's practical peak for the thread count training uses.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import time
from dataclasses import dataclass

import torch

from seqvit.errors import SeqvitError

_MODEL_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "attention_pattern", "window_size")


def _model_shape(model_cfg: dict) -> dict:
    """embed_dim, depth, num_heads, mlp_ratio, attention_pattern, window_size of the config, with
    ForecastViT's own defaults."""
    from seqvit.model.vit import ForecastViT  # lazy: the data stack it imports is not needed here

    defaults = inspect.signature(ForecastViT.__init__).parameters
    shape = {key: (model_cfg or {}).get(key, defaults[key].default) for key in _MODEL_KEYS}
    for key in ("embed_dim", "depth", "num_heads"):
        if not isinstance(shape[key], numbers.Integral) or shape[key] < 1:
            raise SeqvitError(f"config key model.{key}: {shape[key]!r} must be a positive integer")
    if shape["embed_dim"] % shape["num_heads"]:
        raise SeqvitError(
            f"config keys model.embed_dim ({shape['embed_dim']}) must be divisible by model.num_heads "
            f"({shape['num_heads']})"
        )
    return shape


def forward_flops_by_part(
    model_cfg: dict, num_channels: int, patch_size: int, num_tokens: int, token_grid=None
) -> dict[str, float]:
    """Forward matmul FLOPs of one sample through ForecastViT (model/vit.py), part by part.

    C channels, L tokens, p*p pixels per patch, D embed_dim, H heads, F = int(D * mlp_ratio):
      patch_embedding  one [p*p -> D] map per channel               2 C L p^2 D
      aggregation      scores and weighted sum over C channels       4 L H C D
                       value projection and output linear            4 L D^2
      lead_embedding   Linear(1, D) of the lead time                 2 D
      blocks (x depth) qkv 6 L D^2, proj 2 L D^2, MLP 4 L D F;
                       attention Q K^T and A V                       4 L^2 D
                       (model.attention_pattern window: 4 D times the query-key pairs
                       of the block's windows, L w^2 unshifted, less in a shifted block
                       whose pole windows are smaller: model/window.py)
      head             [D -> C p^2]                                  2 L D C p^2
    token_grid: (rows, cols) of the tokens; needed by window attention only.
    Left out: the aggregation's query-key product (2 D^2 per call, on weights only, whatever the
    batch size), and elementwise ops.
    """
    shape = _model_shape(model_cfg)
    dim, heads, depth = shape["embed_dim"], shape["num_heads"], shape["depth"]
    hidden = int(dim * shape["mlp_ratio"])  # as Block sizes its MLP
    channels, tokens, pixels = int(num_channels), int(num_tokens), int(patch_size) ** 2
    if channels < 1 or tokens < 1 or pixels < 1:
        raise SeqvitError(
            f"model FLOPs need at least one channel, token and pixel (got {channels} channels, {tokens} tokens, "
            f"patch size {patch_size})"
        )
    if shape["attention_pattern"] == "window":
        pairs = sum(layout.attention_pairs() for layout in _window_layouts(shape, tokens, token_grid))
    elif shape["attention_pattern"] == "full":
        pairs = depth * tokens * tokens
    else:
        raise SeqvitError(
            f"config key model.attention_pattern: unknown pattern {shape['attention_pattern']!r}; use full or window"
        )
    return {
        "patch_embedding": 2.0 * channels * tokens * pixels * dim,
        "aggregation": 4.0 * tokens * heads * channels * dim + 4.0 * tokens * dim * dim,
        "lead_embedding": 2.0 * dim,
        "block_linear": depth * 2.0 * tokens * dim * (4 * dim + 2 * hidden),
        "attention": 4.0 * pairs * dim,
        "head": 2.0 * tokens * dim * channels * pixels,
    }


def _window_layouts(shape: dict, tokens: int, token_grid):
    from seqvit.model.window import layouts  # lazy, as _model_shape

    if token_grid is None:
        raise SeqvitError(
            "model FLOPs of model.attention_pattern: window need the token grid (rows, cols), not only the token count"
        )
    rows, cols = (int(n) for n in token_grid)
    if rows * cols != tokens:
        raise SeqvitError(f"token grid {rows} x {cols} does not hold {tokens} tokens")
    return layouts(rows, cols, shape["window_size"], shape["depth"])


def model_flops_per_sample(
    model_cfg: dict, num_channels: int, patch_size: int, num_tokens: int, training: bool = True, token_grid=None
) -> float:
    """Model FLOPs of one sample (forward, or forward + backward when training).

    The backward of a matmul costs twice its forward (gradients of the input and of the
    weight), except where the input is data and needs no gradient: the patch embedding and the
    lead-time embedding compute only their weight gradient. Training is therefore 3x the
    forward less those two terms' forward; the plain 3x rule would count 2.5% more at the
    demo's p = 8 (32 tokens), 0.1% more at p = 2 (512 tokens).
    """
    parts = forward_flops_by_part(model_cfg, num_channels, patch_size, num_tokens, token_grid)
    forward = sum(parts.values())
    if not training:
        return forward
    return 3.0 * forward - parts["patch_embedding"] - parts["lead_embedding"]


@dataclass(frozen=True)
class Throughput:
    """Rates of a stretch of training: `samples` global samples (each counted once, however many
    sequence-parallel ranks share it) in `seconds` of wall time on `world_size` devices."""

    samples: float
    seconds: float
    world_size: int
    flops_per_sample: float
    peak_tflops_per_device: float
    num_tokens: int

    def __post_init__(self):
        if not self.seconds > 0:
            raise SeqvitError(f"throughput: seconds must be positive, got {self.seconds!r}")
        if self.samples < 0 or self.flops_per_sample < 0 or self.num_tokens < 0:
            raise SeqvitError(
                f"throughput: samples ({self.samples}), FLOPs per sample ({self.flops_per_sample}) and tokens "
                f"({self.num_tokens}) must not be negative"
            )
        if self.world_size < 1:
            raise SeqvitError(f"throughput: world_size must be at least 1, got {self.world_size}")
        if not self.peak_tflops_per_device > 0:
            raise SeqvitError(
                f"throughput: peak TFLOP/s per device must be positive, got {self.peak_tflops_per_device!r}"
            )

    @classmethod
    def of(
        cls,
        samples: float,
        seconds: float,
        world_size: int,
        num_tokens: int,
        flops_per_sample: float,
        peak_tflops_per_device: float,
    ) -> Throughput:
        """The training loop's argument order (train/engine.py)."""
        return cls(samples, seconds, world_size, flops_per_sample, peak_tflops_per_device, num_tokens)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.samples * self.num_tokens / self.seconds

    @property
    def tflops(self) -> float:
        """Model TFLOP/s of the whole job."""
        return self.samples * self.flops_per_sample / self.seconds / 1e12

    @property
    def tflops_per_device(self) -> float:
        return self.tflops / self.world_size

    @property
    def mfu(self) -> float:
        """Model FLOPs utilization: model TFLOP/s per device over the device's peak (0..1)."""
        return self.tflops_per_device / self.peak_tflops_per_device

    def as_dict(self) -> dict:
        return {
            "samples_per_s": self.samples_per_s,
            "tokens_per_s": self.tokens_per_s,
            "tflops": self.tflops,
            "tflops_per_device": self.tflops_per_device,
            "mfu": self.mfu,
        }


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
_DTYPE_KEYS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _dtype_key(dtype) -> str:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPE_KEYS:
        return _DTYPE_KEYS[dtype]
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPES:
        raise SeqvitError(f"peak TFLOP/s: unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
    return _DTYPE_KEYS[_DTYPES[name]]


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def peak_tflops(train_cfg: dict, device, dtype) -> tuple[float, str]:
    """(peak dense TFLOP/s of one device, where the figure came from) for MFU.

    Order: config key train.peak_tflops; for a GPU, the data-sheet figures of the machine file
    whose device_names matches its name (config/machines/*.yaml, seqvit.plan.machine.device_peaks;
    others must set train.peak_tflops); on CPU, matmuls timed here with train.threads threads.
    """
    train_cfg = train_cfg or {}
    key = _dtype_key(dtype)
    configured = train_cfg.get("peak_tflops")
    if configured is not None:
        if isinstance(configured, bool) or not isinstance(configured, numbers.Real) or not float(configured) > 0:
            raise SeqvitError(
                f"config key train.peak_tflops: {configured!r} must be a positive number (dense TFLOP/s of one device)"
            )
        return float(configured), "config key train.peak_tflops"
    device = torch.device(device)
    if device.type == "cuda":  # also ROCm, which torch presents as cuda
        from seqvit.machines import device_peaks

        name = _device_name(device)
        found = device_peaks(name)
        if found is not None and key in found[0]:
            peaks, source = found
            return peaks[key], f"data sheet in {source} ({key} dense), device {name!r}"
        raise SeqvitError(
            f"no peak {key} TFLOP/s known for the GPU {name!r}; set config key train.peak_tflops to the dense {key} "
            f"matrix TFLOP/s of one device from its data sheet (e.g. --set train.peak_tflops=312)"
        )
    if device.type == "cpu":
        threads = int(train_cfg.get("threads") or torch.get_num_threads())
        value, size = _measure_cpu(threads, key, 0.5)
        return value, f"measured: {size}x{size} {key} matmuls on {threads} CPU thread{'s' if threads != 1 else ''}"
    raise SeqvitError(
        f"no peak TFLOP/s known for device type {device.type!r}; set config key train.peak_tflops (dense TFLOP/s "
        f"of one device)"
    )


def measured_cpu_peak_tflops(threads: int | None = None, dtype="fp32", seconds: float = 0.5) -> float:
    """Best TFLOP/s of square `dtype` matmuls on `threads` CPU threads, timed for about `seconds`.

    Measured once per process and arguments (cached): training calls it at start-up, tests
    call it again.
    """
    threads = int(threads or torch.get_num_threads())
    if threads < 1 or not seconds > 0:
        raise SeqvitError(f"CPU peak: threads ({threads}) and seconds ({seconds}) must be positive")
    return _measure_cpu(threads, _dtype_key(dtype), float(seconds))[0]


@functools.cache
def _measure_cpu(threads: int, key: str, seconds: float) -> tuple[float, int]:
    dtype = _DTYPES[key]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(0)
            size = 256
            while True:  # grow until one matmul is long enough to time and to keep the cores busy
                a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
                out = torch.empty(size, size, dtype=dtype)
                torch.mm(a, b, out=out)  # warm-up: first call picks and loads the kernel
                elapsed = _time_mm(a, b, out)
                if elapsed >= 0.02 or size >= 4096:
                    break
                size *= 2
            best = elapsed
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                best = min(best, _time_mm(a, b, out))
    finally:
        torch.set_num_threads(previous)
    tflops = 2.0 * size**3 / best / 1e12
    if not math.isfinite(tflops) or tflops <= 0:
        raise SeqvitError(f"CPU peak: timing {size}x{size} {key} matmuls gave {tflops!r} TFLOP/s")
    return tflops, size


def _time_mm(a, b, out) -> float:
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    return time.perf_counter() - start
