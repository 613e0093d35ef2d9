"""Loading, overriding and validating the YAML configuration."""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path

import yaml

from seqvit.errors import SeqvitError

# Inside the package, so an installed seqvit validates too; the Snakefile validates against this file.
SCHEMA = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def load_configs(paths, overrides=()) -> dict:
    """Load and deep-merge several YAML files (later ones win), apply overrides, validate."""
    cfg: dict = {}
    for path in paths:
        cfg = _merge(cfg, _read(Path(path)))
    cfg = apply_overrides(cfg, overrides)
    source = ", ".join(str(p) for p in paths) + (f" with --set {', '.join(overrides)}" if overrides else "")
    validate(cfg, source=source)
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
        schema_node: dict | None = load_schema()
        for depth, part in enumerate(parts[:-1]):
            sections = _object_properties(schema_node)
            schema_node = sections.get(part)
            if part not in node and schema_node is not None:
                node[part] = {}  # e.g. --set source.retry.timeout_s=5 on a config without that section
            if not isinstance(node.get(part), dict):
                known = sorted({k for k, v in node.items() if isinstance(v, dict)} | set(sections))
                close = difflib.get_close_matches(part, known, n=1)
                hint = f"; did you mean {'.'.join(parts[:depth] + close)}?" if close else ""
                raise SeqvitError(f"--set {item!r}: config has no section {part!r}{hint}")
            node = node[part]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SeqvitError(
                f"--set {item!r}: the value is not valid YAML ({exc.problem}); write it as a quoted YAML string, "
                f"e.g. --set '{key}=\"...\"'"
            ) from exc
    return cfg


def load_schema() -> dict:
    """The configuration schema shipped inside the package (Snakemake validates against the same file)."""
    return yaml.safe_load(SCHEMA.read_text())


def _object_properties(schema_node: dict | None) -> dict:
    """The sub-sections (object-typed properties) the schema allows at one level."""
    properties = (schema_node or {}).get("properties") or {}
    return {k: v for k, v in properties.items() if isinstance(v, dict) and v.get("type") == "object"}


def _default_setting_validator(schema: dict):
    """A Draft 2020-12 validator that fills in schema defaults while validating.

    The same rule as snakemake.utils.validate(set_default=True), so that the CLI and Snakemake
    resolve a config identically: whenever `properties` is checked on an object, every property
    with a `default` that the object lacks is set first (then validated like a given value).
    Sections absent from the config get no defaults, in both.
    """
    import jsonschema
    from jsonschema import validators

    check_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop:
                    # a copy: Snakemake reloads the schema on every call, we must not share its lists
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    return validators.extend(jsonschema.Draft202012Validator, {"properties": set_defaults})(schema)


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate against the package's schema, fill in its defaults (in place), check semantics.

    Returns cfg. Errors are SeqvitError naming the source, the key and the fix.
    """
    schema = load_schema()
    errors = list(_default_setting_validator(schema).iter_errors(cfg))
    unknown = [e for e in errors if e.validator == "additionalProperties" and e.validator_value is False]
    if unknown:
        raise SeqvitError("\n".join(f"{source}: {line}" for e in unknown for line in _unknown_keys(e)))
    if errors:
        first = min(errors, key=lambda e: [str(p) for p in e.path])
        key = ".".join(str(p) for p in first.path) or "(top level)"
        raise SeqvitError(f"{source}: config key {key}: {first.message}")
    check_semantics(cfg, source)
    return cfg


def check_workflow_config(config: dict, config_files) -> None:
    """The Snakefile's check, before snakemake.utils.validate: the CLI's validation on a copy.

    Snakemake's own validation names neither a misspelt key nor its fix (it reports the required
    key the typo left out, with a dump of the schema) and knows nothing of the semantic checks;
    this gives the same one-line messages as every seqvit subcommand, and exits before any job.
    """
    source = ", ".join(str(p) for p in config_files) or "config"
    try:
        validate(copy.deepcopy(config), source)
    except SeqvitError as exc:
        # SystemExit: Snakemake prints the message alone (a WorkflowError adds a traceback)
        raise SystemExit(f"Configuration error, nothing was run:\n{exc}") from None


def _unknown_keys(error) -> list[str]:
    """One line per key the schema does not allow, with the closest valid key."""
    prefix = "".join(f"{p}." for p in error.path)
    valid = list(error.schema.get("properties", {}))
    lines = []
    for key in sorted(set(error.instance) - set(valid), key=str):
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys here: {', '.join(valid)}"
        lines.append(f"config key {prefix}{key}: unknown; {hint}")
    return lines


# Characters a POSIX shell splits at or interprets: a path holding one breaks the rules' commands.
_SHELL_UNSAFE = set(" \t\n\r\"'$`\\;&|<>()")


def check_semantics(cfg: dict, source: str = "config") -> None:
    """Errors the schema cannot express: overlapping or missing split years, lead times the data
    cannot give, and a results folder the workflow's shell commands would break on. Run by
    validate (the CLI and the Snakefile), so both refuse before any job runs.

    Raises SeqvitError listing every problem, each with its key and the fix.
    """
    problems = []
    splits = cfg.get("splits") or {}
    data = cfg.get("data") or {}
    years = set(data.get("years") or [])

    # C: a year in two splits leaks the evaluation data into training or model selection.
    names = ["train", "val", "test"]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(set(splits.get(first) or []) & set(splits.get(second) or []))
            if shared:
                problems.append(
                    f"config keys splits.{first} and splits.{second}: year(s) {shared} are in both; "
                    "each year belongs to one split, remove them from one of the two"
                )
    clim = (cfg.get("stats") or {}).get("climatology_years")
    if clim:
        held_out = sorted(set(clim) & (set(splits.get("val") or []) | set(splits.get("test") or [])))
        if held_out:
            problems.append(
                f"config key stats.climatology_years: year(s) {held_out} are validation or test years "
                "(splits.val, splits.test); use training years or years before them"
            )

    # D: every year a split or the climatology uses must be fetched.
    if years:
        keyed = [(f"splits.{n}", splits.get(n) or []) for n in names] + [("stats.climatology_years", clim or [])]
        for key, wanted in keyed:
            outside = sorted(set(wanted) - years)
            if outside:
                problems.append(
                    f"config key {key}: year(s) {outside} are not in data.years {sorted(years)}; "
                    f"add them to data.years or remove them from {key}"
                )

    # D: a lead must lead from a stored time to a stored time.
    hours = sorted(set(data.get("hours") or []))
    if hours:
        gaps = [b - a for a, b in zip(hours, hours[1:])] + [24 - hours[-1] + hours[0]]
        step = math.gcd(*gaps)
        for section in ("train", "evaluate"):
            leads = [int(h) for h in (cfg.get(section) or {}).get("lead_hours") or []]
            bad = [h for h in leads if h % step]
            if bad:
                problems.append(
                    f"config key {section}.lead_hours: {bad} h are not multiples of {step} h, the spacing of "
                    f"data.hours {hours}; use multiples of {step} h or add the hours in between to data.hours"
                )
            elif leads and not any(all((h + lead) % 24 in hours for lead in leads) for h in hours):
                problems.append(
                    f"config key {section}.lead_hours: no hour of data.hours {hours} has stored times at every "
                    f"lead {leads} h later; choose leads that data.hours allows or make data.hours evenly spaced"
                )

    # D: the ViT is trained on train.lead_hours; other leads are extrapolation, allowed only on request.
    train_leads = set((cfg.get("train") or {}).get("lead_hours") or [])
    evaluate = cfg.get("evaluate") or {}
    untrained = sorted(set(evaluate.get("lead_hours") or []) - train_leads)
    if train_leads and untrained and not evaluate.get("extrapolate_leads", False):
        problems.append(
            f"config key evaluate.lead_hours: {untrained} h are not in train.lead_hours {sorted(train_leads)}; "
            "add them to train.lead_hours, remove them from evaluate.lead_hours, or set "
            "evaluate.extrapolate_leads: true to score the ViT on leads it was not trained on"
        )

    # F: a window-attention model needs whole windows on the token grid of every patch size.
    model = cfg.get("model") or {}
    if model.get("attention_pattern") == "window" and cfg.get("grid"):
        from seqvit.data.grids import named_grid
        from seqvit.model.window import check_window

        try:
            grid = named_grid(str(cfg["grid"]))
        except SeqvitError:
            grid = None  # an unknown grid name is reported where the grid is used
        for patch in (cfg.get("tokenize") or {}).get("patch_sizes") or []:
            if grid is None or grid.shape[0] % patch or grid.shape[1] % patch:
                continue  # patch sizes that do not divide the grid are reported by tokenize
            try:
                check_window(
                    grid.shape[0] // patch,
                    grid.shape[1] // patch,
                    model.get("window_size"),
                    f" of patch size {patch} on the {grid.shape[0]} x {grid.shape[1]} grid",
                )
            except SeqvitError as exc:
                problems.append(str(exc))

    # E: the results folder reaches shell commands (srun lines, logs) and other tools' command
    # lines; config file paths never do (rules read the resolved config under the results folder).
    paths = [("config key results", cfg.get("results"))]
    for what, path in paths:
        unsafe = sorted(set(str(path or "")) & _SHELL_UNSAFE)
        if unsafe:
            problems.append(
                f"{what} {str(path)!r}: contains {', '.join(repr(c) for c in unsafe)}, which the workflow's "
                "shell commands would split or interpret; use a path without spaces or shell characters "
                "(a symbolic link without them to the same place works)"
            )

    if problems:
        raise SeqvitError("\n".join(f"{source}: {p}" for p in problems))
