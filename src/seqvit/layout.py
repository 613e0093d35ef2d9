"""Where every stage's files live under the results folder (the Snakefile and the CLI agree here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from seqvit.data.sources.plan import plan_requests
from seqvit.errors import SeqvitError

GROUPS = {"single-levels": "single_level", "pressure-levels": "pressure_level"}
# A ViT run's name: vit-p{P}, vit-win-p{P} (window attention), either with -s{seed} when train.seeds is set.
RUN_NAME = re.compile(r"^vit-(?P<variant>(?:win-)?)p(?P<p>\d+)(?P<seed>(?:-s\d+)?)$")


@dataclass(frozen=True)
class Run:
    """One ViT training run of the sweep: a patch size, an attention pattern and maybe a seed."""

    patch_size: int
    window: bool = False
    seed: int | None = None

    @property
    def family(self) -> str:
        """The run's name without its seed: the runs that repeat one model over seeds share it."""
        return f"vit-{'win-' if self.window else ''}p{self.patch_size}"

    @property
    def name(self) -> str:
        return self.family + ("" if self.seed is None else f"-s{self.seed}")

    @property
    def tag(self) -> str:
        """Its folder under train/ (p8 for vit-p8, as before seeds and window runs existed)."""
        return self.name.removeprefix("vit-")


def parse_run(name: str) -> Run:
    """The Run a name stands for (vit-p8, vit-win-p8-s1, ...)."""
    match = RUN_NAME.match(str(name))
    if not match:
        raise SeqvitError(f"{name!r} is not a ViT run name (vit-p<P>, vit-win-p<P>, either with -s<seed>)")
    seed = match["seed"]
    return Run(int(match["p"]), bool(match["variant"]), int(seed.removeprefix("-s")) if seed else None)


class Layout:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        # Each experiment has a folder of its own unless the config names one (config key results).
        self.root = Path(cfg.get("results") or Path("results") / cfg["experiment"])

    # data
    def groups(self) -> list[str]:
        return [group for group, key in GROUPS.items() if self.cfg["data"].get(key)]

    def years(self) -> list[int]:
        return [int(y) for y in self.cfg["data"]["years"]]

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    def raw(self, group: str, year: int, month: int) -> Path:
        return self.raw_dir / group / str(year) / f"{month:02d}.nc"

    def months(self) -> list[int]:
        return [int(m) for m in self.cfg["data"].get("months", range(1, 13))]

    def source_kind(self) -> str:
        return (self.cfg.get("source") or {}).get("kind", "synthetic")

    def raw_requests(self) -> dict:
        """Downloaded sources: request id -> Request (one raw file each), in plan order; cached."""
        if getattr(self, "_requests", None) is None:
            self._requests = {request.id: request for request in plan_requests(self.cfg)}
            self._requests_by_year: dict = {}
            for request in self._requests.values():
                self._requests_by_year.setdefault((request.group, request.year), []).append(request)
        return self._requests

    def raw_year(self, group: str, year: int) -> list[Path]:
        """A year's raw files of one variable group: its months, or the parts of its months when
        a download source splits them into several requests (01_d01-06.nc, ...)."""
        if self.source_kind() == "synthetic":
            return [self.raw(group, year, month) for month in self.months()]
        self.raw_requests()
        return [request.path(self.raw_dir) for request in self._requests_by_year.get((group, int(year)), [])]

    def raw_all(self) -> list[Path]:
        return [p for g in self.groups() for y in self.years() for p in self.raw_year(g, y)]

    def regridded(self, group: str, year: int) -> Path:
        return self.root / "regridded" / group / f"{year}.nc"

    def regridded_all(self) -> list[Path]:
        return [self.regridded(g, y) for g in self.groups() for y in self.years()]

    @property
    def stats(self) -> Path:
        return self.root / "stats" / "stats.nc"

    @property
    def climatology(self) -> Path:
        return self.root / "stats" / "climatology.nc"

    def tokens(self, patch_size: int) -> Path:
        return self.root / "tokens" / f"p{patch_size}.zarr"

    # model runs
    def patch_sizes(self) -> list[int]:
        return [int(p) for p in self.cfg["tokenize"]["patch_sizes"]]

    def window_size(self) -> int | None:
        """sweep.window.window_size: a window-attention run beside every full one (None: none)."""
        window = (self.cfg.get("sweep") or {}).get("window") or {}
        return window.get("window_size")

    def seeds(self) -> list[int | None]:
        """train.seeds, or [None]: one run per model at train.seed, its name without a seed suffix."""
        return [int(s) for s in self.cfg["train"].get("seeds") or []] or [None]

    def runs(self) -> list[Run]:
        """Every ViT run: full attention per patch size, then window attention (sweep.window), each per seed."""
        windows = [False, True] if self.window_size() is not None else [False]
        return [Run(p, w, s) for w in windows for p in self.patch_sizes() for s in self.seeds()]

    def check_sweep(self) -> None:
        """Refuse window runs that cannot train: a window size that does not tile a patch size's token
        grid, or a patch size trained sequence-parallel (window attention runs in one process)."""
        size = self.window_size()
        if size is None:
            return
        from seqvit.data.grids import named_grid
        from seqvit.runs import run_parallelism

        nlat, nlon = named_grid(str(self.cfg["grid"])).shape
        for p in self.patch_sizes():
            rows, cols = nlat // p, nlon // p
            if rows % size or cols % size:
                fits = [d for d in range(1, min(rows, cols) + 1) if rows % d == 0 and cols % d == 0]
                raise SeqvitError(
                    f"config key sweep.window.window_size: {size} does not divide the token grid of patch size {p} "
                    f"({rows} x {cols} tokens on the {nlat} x {nlon} grid); use one of {fits} or leave out sweep.window"
                )
            if run_parallelism(self.cfg, p)[0] > 1:
                raise SeqvitError(
                    f"config key sweep.window: window runs train in one process per sample, but patch size {p} has "
                    "parallel.sp > 1; set parallel.sp: 1 (also in parallel.runs) or leave out sweep.window"
                )

    def run(self, name: str) -> Run:
        """The run of this config with that name; other names are refused, naming the valid ones."""
        run = parse_run(name)
        if run not in self.runs():
            raise SeqvitError(
                f"run {name!r} is not in this config's sweep (tokenize.patch_sizes, sweep.window, train.seeds); "
                f"its runs are {[r.name for r in self.runs()]}"
            )
        return run

    def run_config(self, name: str) -> dict:
        """The config one run trains with: window attention for window runs, its seed as train.seed."""
        run = self.run(name)
        cfg = {**self.cfg, "model": dict(self.cfg["model"]), "train": dict(self.cfg["train"])}
        if run.window:
            cfg["model"].update(attention_pattern="window", window_size=self.window_size())
        if run.seed is not None:
            cfg["train"]["seed"] = run.seed
        return cfg

    def run_dir(self, run: int | str | Run) -> Path:
        """A run's folder: train/p8 for vit-p8 (or patch size 8), train/win-p8-s1 for vit-win-p8-s1."""
        if isinstance(run, int):
            run = Run(run)
        elif isinstance(run, str):
            run = parse_run(run)
        return self.root / "train" / run.tag

    def train_logs(self) -> dict[str, Path]:
        """{run name: its training metrics.csv} of every ViT run."""
        return {run.name: self.run_dir(run) / "metrics.csv" for run in self.runs()}

    def prediction(self, name: str) -> Path:
        return self.root / "predictions" / f"{name}.nc"

    def model_names(self) -> list[str]:
        return [run.name for run in self.runs()]

    def baseline_names(self) -> list[str]:
        return list(self.cfg["evaluate"].get("baselines", []))

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"
