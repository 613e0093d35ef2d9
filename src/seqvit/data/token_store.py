"""Reading token segments from a tokens store (the zarr store `seqvit tokenize` writes).

TokenStore.read(times, token range) returns float32 [n, channel, tokens, pixels]. For the layout
tokenize() writes (zarr v3 sharding, one time x all channels x one token segment per inner
chunk) it reads the chunks of that token range directly with os.pread; any other layout is read
through zarr (correct, only slower).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr

from seqvit.data.tokenize import check_tokens_store
from seqvit.errors import SeqvitError

# Offset and length of an inner chunk that a shard does not hold (zarr v3 sharding spec).
_ABSENT = np.uint64(2**64 - 1)
# Shard indices kept per TokenStore (each is 16 bytes per inner chunk: 8 KB for 64 times x 8 segments).
_INDEX_CACHE = 1024


class _ZarrShards:
    """Where the inner chunks of a tokens array lie, for the layout tokenize() writes: zarr v3
    sharding, index at the end, inner chunks of one time x all channels x a token segment x all
    pixels, stored as raw little-endian float32. Reading those with os.pread skips zarr's per-chunk
    overhead (~0.3 ms a chunk, more than reading a chunk's bytes at demo sizes)."""

    def __init__(self, folder: Path, meta: dict):
        self.folder = folder
        shape = tuple(int(n) for n in meta["shape"])
        shard = tuple(int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"])
        sharding = meta["codecs"][0]["configuration"]
        inner = tuple(int(n) for n in sharding["chunk_shape"])
        _, channels, _, pixels = shape
        if inner[0] != 1 or (inner[1], inner[3]) != (channels, pixels) or (shard[1], shard[3]) != (channels, pixels):
            raise ValueError("not a (1, C, segment, P*P) inner chunk grid")
        self.segment = inner[2]
        self.times_per_shard = shard[0]
        self.segments_per_shard = shard[2] // self.segment
        self.chunk_shape = (channels, self.segment, pixels)
        self.chunk_nbytes = 4 * channels * self.segment * pixels
        crc = any(c["name"] == "crc32c" for c in sharding["index_codecs"])
        self.index_nbytes = 16 * self.times_per_shard * self.segments_per_shard + (4 if crc else 0)
        self.fill = np.float32(float(meta["fill_value"]) if meta.get("fill_value") is not None else 0.0)
        self._index: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()

    @classmethod
    def of(cls, array_folder: Path):
        """The layout of `array_folder`, or None when it is another layout (read through zarr instead)."""
        try:
            meta = json.loads((array_folder / "zarr.json").read_text())
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            (inner,) = conf["codecs"]
            index_codecs = [c["name"] for c in conf["index_codecs"]]
            key = meta["chunk_key_encoding"]
            fits = (
                meta["zarr_format"] == 3
                and meta["data_type"] == "float32"
                and len(meta["shape"]) == 4
                and meta["chunk_grid"]["name"] == "regular"
                and codec["name"] == "sharding_indexed"
                and conf.get("index_location", "end") == "end"
                and inner["name"] == "bytes"
                and inner.get("configuration", {}).get("endian", "little") == "little"
                and index_codecs in (["bytes"], ["bytes", "crc32c"])
                and conf["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                and key["name"] == "default"
                and key.get("configuration", {}).get("separator", "/") == "/"
            )
            return cls(array_folder, meta) if fits else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _path(self, shard_time: int, shard_token: int) -> Path:
        return self.folder / "c" / str(shard_time) / "0" / str(shard_token) / "0"

    def _shard_index(self, shard_time: int, shard_token: int, handle) -> np.ndarray | None:
        """[times, segments, (offset, nbytes)] of one shard (cached); None when the shard has no file."""
        key = (shard_time, shard_token)
        if key in self._index:
            self._index.move_to_end(key)
            return self._index[key]
        index = None  # zarr writes no file for a shard that is all fill value
        if handle is not None:
            size = os.fstat(handle.fileno()).st_size
            where = self._path(*key)
            if size < self.index_nbytes:
                raise SeqvitError(f"{where}: shard of {size} bytes is too short for its index; rerun `seqvit tokenize`")
            raw = os.pread(handle.fileno(), self.index_nbytes, size - self.index_nbytes)
            count = self.times_per_shard * self.segments_per_shard
            index = np.frombuffer(raw[: 16 * count], dtype="<u8").reshape(self.times_per_shard, -1, 2)
            held = index[..., 0] != _ABSENT
            offsets, lengths = index[..., 0][held], index[..., 1][held]
            if np.any(lengths != self.chunk_nbytes) or np.any(offsets + self.chunk_nbytes > size):
                raise SeqvitError(
                    f"{where}: shard index does not match {self.chunk_nbytes}-byte chunks; rerun `seqvit tokenize`"
                )
        self._index[key] = index
        if len(self._index) > _INDEX_CACHE:
            self._index.popitem(last=False)
        return index

    def read(self, times: np.ndarray, start: int, stop: int) -> np.ndarray:
        """[len(times), C, stop-start, PP] from the chunks of token range [start, stop) only."""
        channels, seg, pixels = self.chunk_shape
        out = np.empty((len(times), channels, stop - start, pixels), dtype=np.float32)
        first, last = start // seg, (stop - 1) // seg
        per_shard = self.segments_per_shard
        shard_of_time, time_in_shard = np.divmod(times, self.times_per_shard)
        for shard_time in np.unique(shard_of_time):
            rows = np.flatnonzero(shard_of_time == shard_time)
            for shard_token in range(first // per_shard, last // per_shard + 1):
                path = self._path(int(shard_time), shard_token)
                handle = open(path, "rb", buffering=0) if path.exists() else None  # one open per shard and read
                try:
                    index = self._shard_index(int(shard_time), shard_token, handle)
                    chunks = range(max(first, shard_token * per_shard), min(last + 1, (shard_token + 1) * per_shard))
                    for chunk in chunks:
                        lo, hi = max(start, chunk * seg), min(stop, (chunk + 1) * seg)
                        target, source = slice(lo - start, hi - start), slice(lo - chunk * seg, hi - chunk * seg)
                        offsets = None if index is None else index[time_in_shard[rows], chunk % per_shard, 0]
                        for k, row in enumerate(rows):
                            if offsets is None or offsets[k] == _ABSENT:
                                out[row, :, target] = self.fill
                                continue
                            if handle is None:  # a cached index whose shard file is gone
                                raise SeqvitError(
                                    f"{path}: shard file disappeared while reading; rerun `seqvit tokenize`"
                                )
                            raw = os.pread(handle.fileno(), self.chunk_nbytes, int(offsets[k]))
                            out[row, :, target] = np.frombuffer(raw, dtype="<f4").reshape(self.chunk_shape)[:, source]
                finally:
                    if handle is not None:
                        handle.close()
        return out


class TokenStore:
    """Reads token segments from a tokens zarr store; opens the array lazily so it can be pickled into workers."""

    def __init__(self, path):
        self.path = Path(path)
        check_tokens_store(self.path)
        self._array = None
        self._layout = None

    def __getstate__(self):
        return {"path": self.path}  # open handles and caches stay with the process that made them

    def __setstate__(self, state):
        self.path, self._array, self._layout = state["path"], None, None

    def _open(self):
        if self._array is None:
            self._array = zarr.open_array(self.path / "tokens", mode="r")
            self._layout = _ZarrShards.of(self.path / "tokens")
            if len(self._array.shape) != 4:
                raise SeqvitError(
                    f"{self.path}: tokens array of shape {self._array.shape} is not (time, channel, token, pixel)"
                )
        return self._array

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(time, channel, token, pixel)."""
        return tuple(self._open().shape)

    @property
    def segmented(self) -> bool:
        """Whether reads go chunk by chunk through the layout tokenize() writes (else: through zarr)."""
        self._open()
        return self._layout is not None

    def read(self, time_positions, token_range: tuple[int, int]) -> np.ndarray:
        """float32 [n, C, stop-start, PP], in the order given (repeats allowed), reading only the chunks of
        that token range."""
        n_time, _, n_token, _ = self.shape
        times = np.asarray(time_positions, dtype=np.int64).reshape(-1)
        if times.size and (times.min() < 0 or times.max() >= n_time):
            raise IndexError(f"{self.path}: time positions outside 0 .. {n_time - 1}")
        start, stop = check_range(token_range, n_token, self.path)
        unique, inverse = np.unique(times, return_inverse=True)  # a time shared by samples is read once
        if self._layout is not None:
            block = self._layout.read(unique, start, stop)
        else:  # another layout (a store from before segment chunking): correct, only slower
            block = self._array.get_orthogonal_selection((unique, slice(None), slice(start, stop), slice(None)))
            block = np.asarray(block, dtype=np.float32)
        if len(unique) == len(times) and np.array_equal(unique, times):
            return block
        return block[inverse]


def check_range(token_range, num_tokens: int, where) -> tuple[int, int]:
    start, stop = (int(v) for v in token_range)
    if not 0 <= start < stop <= num_tokens:
        raise SeqvitError(f"{where}: token range [{start}, {stop}) is not a non-empty part of 0 .. {num_tokens}")
    return start, stop
