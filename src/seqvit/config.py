"""Loading, overriding and validating the YAML configuration."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import yaml

from seqvit.errors import SeqvitError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_configs(paths, overrides=()) -> dict:
    """Load and deep-merge several YAML files (later ones win), apply overrides, validate."""
    cfg: dict = {}
    for path in paths:
        cfg = _merge(cfg, _read(Path(path)))
    cfg = apply_overrides(cfg, overrides)
    validate(cfg, source=", ".join(str(p) for p in paths))
    return cfg


def load_config(path, overrides=()) -> dict:
    return load_configs([path], overrides)


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path: Path) -> dict:
    if not path.exists():
        raise SeqvitError(f"{path}: config file not found; pass --config config/config.yaml or a copy of it")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SeqvitError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise SeqvitError(f"{path}: the top level must be a mapping of keys to values")
    return cfg


def apply_overrides(cfg: dict, overrides) -> dict:
    """Apply `key.sub=value` strings; values are parsed as YAML (numbers, lists, booleans)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SeqvitError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.steps=100")
        node = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if depth == 0 and part not in node and part in _optional_sections():
                node[part] = {}  # e.g. --set parallel.sp=2 on a config without a parallel section
            if not isinstance(node.get(part), dict):
                raise SeqvitError(f"--set {item!r}: config has no section {part!r}")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


def _optional_sections() -> set[str]:
    """Top-level sections the schema knows (objects) that a config may leave out."""
    if not SCHEMA.exists():
        return set()
    schema = yaml.safe_load(SCHEMA.read_text())
    required = set(schema.get("required", []))
    return {k for k, v in schema.get("properties", {}).items() if v.get("type") == "object" and k not in required}


def validate(cfg: dict, source: str = "config") -> None:
    """Validate against workflow/schemas/config.schema.yaml (the schema Snakemake also uses)."""
    import jsonschema

    if not SCHEMA.exists():  # an installed copy without the repository: Snakemake validates instead
        logging.getLogger(__name__).warning("config schema %s not found; config not validated", SCHEMA)
        return
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        key = ".".join(str(p) for p in first.path) or "(top level)"
        raise SeqvitError(f"{source}: config key {key}: {first.message}")


def flatten_overrides(overrides: dict, prefix: str = "") -> list[str]:
    """Turn a nested dict (Snakemake's `--config k=v` values) into `dotted.key=value` strings."""
    items = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            items += flatten_overrides(value, f"{dotted}.")
        else:
            items.append(f"{dotted}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return items


def command_line_overrides(overwrite: dict, configfiles) -> dict:
    """Snakemake's `--config` values: its overwrite_config less what the config files say.

    Snakemake folds the contents of --configfile into overwrite_config; only entries that the
    files do not already hold came from `--config` and must be handed on to the CLI.
    """
    from_files: dict = {}
    for path in configfiles:
        from_files = _merge(from_files, _read(Path(path)))

    def differ(new: dict, old: dict) -> dict:
        out = {}
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(old.get(key), dict):
                sub = differ(value, old[key])
                if sub:
                    out[key] = sub
            elif key not in old or old[key] != value:
                out[key] = value
        return out

    return differ(overwrite or {}, from_files)
