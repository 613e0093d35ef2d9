"""Instruments for tests of training internals: dropout masks taped and replayed, collectives logged.

DropoutTape wraps torch.nn.functional.dropout (what nn.Dropout and the math attention kernel
call): recording, it draws each mask from the generator as dropout would and keeps it; replaying,
it uses the masks it is given, in call order, instead of drawing. Both apply a mask m as
x * (m * 1/(1-p)), so a recorded and a replayed run compute the same numbers. Dropout inside a
fused kernel (sdpa, flash) is not a call to F.dropout and is not taped.

CollectiveLog wraps the collectives of torch.distributed and records, for every call, the
devices of the tensors handed to it, the device types its group has a backend for, the code
that called it, and whether a tensor came from a factory call that named no device
(DevicelessTensors marks those): on a GPU such a tensor would sit in host memory.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from seqvit.parallel import groups


class DropoutTape:
    """Records (replay None) or replays the masks of F.dropout calls, see the module docstring.

    replay: the masks each rank recorded, one list per rank in rank order; at every call the
    ranks' shares are joined into the mask of this call's input (join).
    """

    def __init__(self, replay: list[list[torch.Tensor]] | None = None):
        self.masks: list[torch.Tensor] = []
        self.replay = replay
        self.position = 0

    def __enter__(self):
        self._original = F.dropout
        F.dropout = self._dropout
        return self

    def __exit__(self, *exc):
        F.dropout = self._original

    def _dropout(self, input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return self._original(input, p, training, inplace)
        if self.replay is None:  # the draw dropout itself would make (same shape, same generator)
            mask = self._original(torch.ones_like(input), p, True, False) != 0
            self.masks.append(mask)
        else:
            mask = join([masks[self.position] for masks in self.replay], input.shape)
            self.position += 1
        return input * (mask.to(input.dtype) * (1.0 / (1.0 - p)))


def join(parts: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The ranks' masks of one call concatenated in rank order along the one dimension in which each is a
    share of `shape` (tokens, batch rows, heads or query rows)."""
    dims = [d for d in range(len(shape)) if shape[d] != parts[0].shape[d]]
    if not dims and len(parts) == 1:
        return parts[0]
    if len(dims) != 1 or shape[dims[0]] != sum(p.shape[dims[0]] for p in parts):
        raise AssertionError(f"rank masks {[tuple(p.shape) for p in parts]} are no shares of {tuple(shape)}")
    return torch.cat(parts, dim=dims[0])


# Factory functions that put a tensor on the default device unless told otherwise.
_FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange}


class DevicelessTensors(TorchFunctionMode):
    """Marks tensors made by a factory call that names no device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FACTORIES and kwargs.get("device") is None and isinstance(out, torch.Tensor):
            out._made_without_device = True
        return out


_TENSOR_COLLECTIVES = (
    "_all_gather_base",
    "_reduce_scatter_base",
    "all_gather",
    "all_gather_coalesced",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_reduce",
    "all_reduce_coalesced",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "gather",
    "irecv",
    "isend",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_single",
    "reduce_scatter_tensor",
    "scatter",
    "send",
)
_OTHER_COLLECTIVES = (
    "barrier",
    "monitored_barrier",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
)
_SOURCES = (f"{Path(groups.__file__).parents[1]}/", "/deepspeed/")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _caller() -> str:
    """module:function of the innermost frame in seqvit or DeepSpeed that led to this call."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if any(source in frame.filename for source in _SOURCES):
            module = "deepspeed" if "/deepspeed/" in frame.filename else Path(frame.filename).stem
            return f"{module}:{frame.name}"
    return "other"


class CollectiveLog:
    def __init__(self):
        self.calls: list[dict] = []

    def __enter__(self):
        self._originals = {}
        for name in _TENSOR_COLLECTIVES + _OTHER_COLLECTIVES:
            if hasattr(dist, name):
                self._originals[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(name, self._originals[name]))
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(dist, name, original)

    def _wrap(self, name, original):
        def logged(*args, **kwargs):
            group = kwargs.get("group")
            tensors = [] if name in _OTHER_COLLECTIVES else list(_tensors(list(args) + list(kwargs.values())))
            self.calls.append(
                {
                    "collective": name,
                    "caller": _caller(),
                    "devices": sorted({str(t.device) for t in tensors}),
                    "deviceless": any(getattr(t, "_made_without_device", False) for t in tensors),
                    "group_devices": groups.backend_devices(group),
                    "object_device": dist.distributed_c10d._get_object_coll_device(group)
                    if name in _OTHER_COLLECTIVES
                    else None,
                }
            )
            return original(*args, **kwargs)

        return logged
