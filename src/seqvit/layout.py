"""Where every stage's files live under the results folder (the Snakefile and the CLI agree here)."""

from __future__ import annotations

from pathlib import Path

from seqvit.data.sources.plan import plan_requests

GROUPS = {"single-levels": "single_level", "pressure-levels": "pressure_level"}


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

    def run_dir(self, patch_size: int) -> Path:
        return self.root / "train" / f"p{patch_size}"

    def prediction(self, name: str) -> Path:
        return self.root / "predictions" / f"{name}.nc"

    def model_names(self) -> list[str]:
        return [f"vit-p{p}" for p in self.patch_sizes()]

    def baseline_names(self) -> list[str]:
        return list(self.cfg["evaluate"].get("baselines", []))

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"
