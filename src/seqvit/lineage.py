"""What made a file: the settings of every stage upstream of it, recorded in the file itself.

Snakemake reruns a stage when its inputs, parameters or code change, but it cannot tell that a
file on disk was made by another config (a demo's synthetic raw files in a folder that an ERA5
config then uses, a tokens store left from other splits). So every stage records, in what it
writes, the *lineage* of that file: the config settings of every stage upstream of it, as one
JSON dict (netCDF global attribute or zarr attribute `seqvit_lineage`; downloaded raw files keep
it in their manifest, so the file itself stays byte for byte what the source delivered). Every
stage compares the lineage of each input with the one the config it runs with would make, and
refuses a file that differs, naming the file, the keys that differ and the fix.

The lineage of a file is a pure function of the config (and the patch size for tokens), so a
stage can say what it expects without reading anything else.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqvit.data.fields import channel_names
from seqvit.errors import SeqvitError

ATTR = "seqvit_lineage"
# Keys of `source` that decide how raw data is fetched, not what it is.
SOURCE_FETCH_KEYS = ("max_parallel", "retry", "max_fields", "storage_options")
# Train keys that change neither the weights a run produces nor what is evaluated: a checkpoint
# resumes across them, and the workflow does not retrain for them (they take effect next run).
TRAIN_REPORTING_KEYS = (
    "threads",
    "val_every",
    "checkpoint_every",
    "log_every",
    "loader_workers",
    "peak_tflops",
    "keep_checkpoints",
)
FIX = (
    "rerun the stage that writes it with this config (snakemake reruns it once the file is deleted), "
    "or give this experiment a results folder of its own (config key results)"
)


def raw(cfg: dict) -> dict:
    source = {k: v for k, v in sorted((cfg.get("source") or {}).items()) if k not in SOURCE_FETCH_KEYS}
    return {"source": source}


def regridded(cfg: dict) -> dict:
    return {
        **raw(cfg),
        "grid": cfg.get("grid"),
        "regrid_method": (cfg.get("regrid") or {}).get("method", "conservative"),
    }


def stats(cfg: dict) -> dict:
    return {
        **regridded(cfg),
        "channels": channel_names(cfg),
        "train_years": sorted(int(y) for y in cfg["splits"]["train"]),
    }


def climatology(cfg: dict) -> dict:
    years = sorted(int(y) for y in (cfg.get("stats") or {}).get("climatology_years") or cfg["splits"]["train"])
    return {
        **regridded(cfg),
        "channels": channel_names(cfg),
        "climatology_years": years,
        "hours": sorted(cfg["data"].get("hours", [])),
    }


def tokens(cfg: dict, patch_size: int) -> dict:
    years = sorted(int(y) for y in cfg["data"].get("years", []))
    segments = (cfg.get("tokenize") or {}).get("sp_segments")
    return {**stats(cfg), "years": years, "patch_size": int(patch_size), "sp_segments": segments}


def forecast(cfg: dict) -> dict:
    """What makes a forecast file comparable with the truth: the data, the test years, the leads."""
    test = sorted(int(y) for y in cfg["splits"]["test"])
    leads = sorted(int(h) for h in cfg["evaluate"]["lead_hours"])
    return {**regridded(cfg), "channels": channel_names(cfg), "test_years": test, "lead_hours": leads}


def canonical(lineage: dict) -> dict:
    """The lineage as JSON would give it back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(lineage, sort_keys=True))


def dumps(lineage: dict) -> str:
    return json.dumps(canonical(lineage), sort_keys=True)


def differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    """`key: <found> in the file, <expected> in the config` for every dotted key whose value differs."""
    out = []
    for key in sorted(set(found) | set(expected), key=str):
        old, new = found.get(key, "(absent)"), expected.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {json.dumps(old)} in the file, {json.dumps(new)} in the config")
    return out


def check(path, found: dict | None, expected: dict, what: str) -> None:
    """Refuse `path` (a `what`, e.g. "regridded file") unless its lineage is `expected`."""
    if found is None:
        raise SeqvitError(
            f"{path}: this {what} records no lineage (the settings that made it), so it may come from another "
            f"config or an older seqvit; delete it and {FIX}"
        )
    found, expected = canonical(found), canonical(expected)
    if found != expected:
        raise SeqvitError(
            f"{path}: this {what} was made with other settings ({'; '.join(differences(found, expected))}); {FIX}"
        )


def parse(text) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(str(text))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def of_netcdf(path) -> dict | None:
    import netCDF4

    try:
        with netCDF4.Dataset(path) as nc:
            return parse(getattr(nc, ATTR, None))
    except OSError:  # not netCDF (a zip or GRIB delivery): the reader that opens it says what is wrong
        return None


def of_zarr(path) -> dict | None:
    import zarr

    return parse(zarr.open_group(str(path), mode="r").attrs.get(ATTR))


def of_raw(path) -> dict | None:
    """A raw file's lineage: from its manifest when it was downloaded (the file stays as delivered),
    else from the file (the embedded source writes it there)."""
    path = Path(path)
    if len(path.parents) >= 3:
        manifest = path.parents[2] / "manifest" / path.parent.parent.name / path.parent.name / f"{path.stem}.json"
        if manifest.exists():
            recorded = json.loads(manifest.read_text()).get("lineage")
            return recorded if isinstance(recorded, dict) else None
    return of_netcdf(path)


def check_netcdf(path, expected: dict, what: str) -> None:
    path = Path(path)
    if not path.exists():
        raise SeqvitError(f"{path}: {what} not found; run the stage that writes it first")
    check(path, of_netcdf(path), expected, what)
