"""Plans of every run of a config, as readable tables (seqvit plan), and the planner's document
(seqvit plan --markdown writes docs/scale.md)."""

from __future__ import annotations

from pathlib import Path

from seqvit.errors import SeqvitError
from seqvit.plan.estimate import Plan, cheapest_fix, plan_run, run_shape
from seqvit.plan.machine import DEFAULT_MACHINE, load_machine

GB = 1e9


def plan_config(cfg: dict, patch_sizes=None, machine_name: str | None = None) -> list[Plan]:
    machine = load_machine(machine_name or cfg.get("machine") or DEFAULT_MACHINE)
    sizes = patch_sizes or cfg["tokenize"]["patch_sizes"]
    return [plan_run(run_shape(cfg, int(p)), machine) for p in sizes]


def _layout(plan: Plan) -> str:
    s = plan.shape
    nodes = -(-s.world // plan.machine.devices_per_node)
    return f"sp={s.sp} x dp={s.dp} = {s.world} ranks ({nodes} node{'s' if nodes != 1 else ''}), {s.sp_method}"


def format_plan(plan: Plan) -> str:
    s, m = plan.shape, plan.machine
    lines = [
        f"run p={s.patch_size} on {m.name}: {s.tokens:,} tokens, {s.local_tokens:,} per rank; {_layout(plan)}",
        f"  model {plan.params / 1e6:.1f} M parameters, {s.precision}, ZeRO-{s.zero_stage}, micro-batch "
        f"{s.micro_batch} x {s.grad_accumulation} accumulation per replica, activation checkpointing "
        f"{'on' if s.activation_checkpointing else 'off'}, attention {s.attention}",
        "  memory per rank                     GB",
    ]
    for part, size in plan.memory.items():
        lines.append(f"    {part:<30} {size / GB:9.2f}")
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"    {'peak':<30} {plan.peak / GB:9.2f}  of {plan.capacity / GB:.1f} GB: {verdict}")
    lines.append(
        f"  FLOPs per step per rank: {plan.flops['model_per_rank']:.3e} model, "
        f"{plan.flops['executed_per_rank']:.3e} executed (recomputation included)"
    )
    lines.append(f"  step time {plan.step_seconds:.3f} s: compute {plan.compute_seconds:.3f} s")
    for kind, seconds in plan.comm.items():
        if seconds:
            lines.append(f"    {kind:<30} {seconds:9.3f} s")
    lines.append(f"  {plan.tokens_per_s:,.0f} tokens/s, MFU {plan.mfu:.1%} (efficiency {m.efficiency:.0%} assumed)")
    return "\n".join(lines)


def summary_row(plan: Plan) -> str:
    s = plan.shape
    return (
        f"p={s.patch_size:<3} {s.tokens:>10,} tokens  {_layout(plan):<48} peak {plan.peak / GB:8.1f} GB / "
        f"{plan.capacity / GB:.0f}  {'fits' if plan.fits else 'NO  '}  step {plan.step_seconds:9.3f} s"
    )


def misfit_line(plan: Plan) -> str:
    """One line naming the run, its peak, the capacity and the cheapest change that makes it fit."""
    s = plan.shape
    head = (
        f"run p={s.patch_size} ({s.tokens:,} tokens, sp={s.sp} x dp={s.dp}, {s.sp_method}) does not fit: predicted "
        f"peak {plan.peak / GB:.1f} GB per rank, capacity {plan.capacity / GB:.1f} GB on {plan.machine.name}"
    )
    fix = cheapest_fix(s, plan.machine)
    if fix is None:
        return head + "; no change tried fits (checkpointing, accumulation, ZeRO, sp, dp): use a smaller model"
    change, fixed = fix
    return head + f"; cheapest fix: {change} (peak {fixed.peak / GB:.1f} GB, step {fixed.step_seconds:.2f} s)"


def refuse_misfits(cfg: dict) -> None:
    """Raise SeqvitError naming every training run of `cfg` that does not fit its machine, with the fix."""
    from seqvit.errors import SeqvitError

    misfits = [plan for plan in plan_config(cfg) if not plan.fits]
    if misfits:
        lines = "\n".join(misfit_line(plan) for plan in misfits)
        raise SeqvitError(f"{lines}\n(seqvit plan --config ... prints the whole estimate; set the fix in the config)")


# The document `seqvit plan --markdown` writes (docs/scale.md) -----------------------------------

PAPER = "Tsaris et al., *Sequence Length Scaling in Vision Transformers for Scientific Images on Frontier*, arXiv 2405.15780"
PAPER_NODES, PAPER_EFFICIENCY = 256, 0.94  # the paper's batch-scaling efficiency on 2,048 MI250X GCDs
DOC_CONFIGS = ("config/frontier-seqscale.yaml", "config/frontier-paper-claims.yaml")
VALIDATION = Path("docs") / "plan-validation.md"


def _shipped(relative: str | Path) -> Path:
    """A file of the checkout `seqvit plan --markdown` runs in (its working folder)."""
    path = Path(relative)
    if not path.exists():
        raise SeqvitError(f"{path}: not found; run seqvit plan --markdown in the repository's top folder")
    return path


def scenario_plans(cfg: dict, machine_name: str | None = None) -> list[tuple[dict, Plan]]:
    """(scenario, its plan) for every plan.scenarios entry: the config with the overlay merged, checked as training would."""
    from dataclasses import replace

    from seqvit.config import _merge, validate
    from seqvit.errors import SeqvitError
    from seqvit.plan.suggest import check_accepted

    out = []
    for scenario in (cfg.get("plan") or {}).get("scenarios") or []:
        name, patch = scenario["name"], int(scenario["patch_size"])
        where = f"plan.scenarios {name!r}"
        merged = validate(_merge(cfg, scenario.get("overlay") or {}), source=where)
        machine = load_machine(machine_name or merged.get("machine") or DEFAULT_MACHINE)
        try:
            shape = run_shape(merged, patch)
            if scenario.get("tokens"):
                shape = replace(shape, tokens=int(scenario["tokens"]))
            check_accepted(shape, merged)
        except SeqvitError as exc:
            raise SeqvitError(f"{where}: {exc}") from exc
        out.append((scenario, plan_run(shape, machine)))
    return out


def _nodes(plan: Plan) -> int:
    return -(-plan.shape.world // plan.machine.devices_per_node)


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _row(name: str, plan: Plan, steps: int) -> str:
    from seqvit.plan.suggest import weak_scaling

    s = plan.shape
    scaling = weak_scaling(s, plan.machine, PAPER_NODES)
    scaled = (
        f"{_percent(scaling.efficiency)} ({scaling.base_nodes} to {scaling.nodes})"
        if scaling is not None
        else f"one replica needs more than {PAPER_NODES} nodes"
    )
    hours = steps * plan.step_seconds / 3600
    method = s.sp_method if s.sp > 1 else "-"
    cells = [
        name,
        f"{s.tokens:,}",
        f"{plan.params / 1e9:.2f} B" if plan.params >= 1e9 else f"{plan.params / 1e6:.0f} M",
        f"{s.sp} x {s.dp}, {method}",
        str(_nodes(plan)),
        f"{s.micro_batch} x {s.grad_accumulation}",
        str(s.zero_stage),
        "on" if s.activation_checkpointing else "off",
        f"{plan.peak / GB:.1f}" + ("" if plan.fits else " (does not fit)"),
        f"{plan.step_seconds:,.2f}",
        f"{plan.tokens_per_s:,.0f}",
        _percent(plan.mfu),
        scaled,
        f"{hours:,.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _table(rows: list[tuple[str, Plan, int]]) -> list[str]:
    capacity = rows[0][1].capacity / GB if rows else 0
    head = [
        "run",
        "tokens",
        "parameters",
        "sp x dp, method",
        "nodes",
        "micro-batch x accumulation",
        "ZeRO",
        "checkpointing",
        f"peak GB per device (of {capacity:.0f})",
        "step s",
        "tokens/s",
        "MFU",
        f"weak scaling to {PAPER_NODES} nodes (paper: {PAPER_EFFICIENCY:.0%})",
        "train.steps, hours",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + [_row(name, plan, steps) for name, plan, steps in rows]


def _config_section(title: str, shown: str, cfg: dict, machine_name: str | None) -> list[str]:
    plans = plan_config(cfg, machine_name=machine_name)
    steps = int(cfg["train"]["steps"])
    lines = [f"## {title} (`{shown}`)", ""]
    machines = sorted({plan.machine.name for plan in plans})
    lines.append(
        f"Machine {', '.join(machines)}; global batch {cfg['train']['batch_size']}, {steps:,} steps "
        f"(`train.steps`), {cfg['train']['precision']}, attention `{cfg['model'].get('attention', 'sdpa')}`. "
        f"Every run of the config (`tokenize.patch_sizes`, layouts from `parallel.runs`):"
    )
    lines += ["", *_table([(f"p={plan.shape.patch_size}", plan, steps) for plan in plans])]
    scenarios = scenario_plans(cfg, machine_name)
    if scenarios:
        lines += ["", "Scenarios on paper (`plan.scenarios`: the config with an overlay, not trained):", ""]
        for scenario, _ in scenarios:
            claim = scenario.get("claim", "")
            lines.append(f"- **{scenario['name']}**" + (f": {claim}" if claim else ""))
        rows = [(s["name"], plan, steps) for s, plan in scenarios]
        lines += ["", *_table(rows)]
        for scenario, plan in scenarios:
            if scenario.get("scaling_nodes"):
                lines += ["", *_scaling_table(scenario, plan)]
    return lines


def _scaling_table(scenario: dict, plan: Plan) -> list[str]:
    from seqvit.plan.suggest import weak_scaling

    s, m = plan.shape, plan.machine
    lines = [
        f"**{scenario['name']}** by node count: {s.batch_size // s.dp} samples per replica of sp={s.sp} "
        f"(micro-batch {s.micro_batch} x {s.grad_accumulation}), {s.tokens:,} tokens; efficiency = tokens/s per "
        f"device against the fewest nodes (the paper: {PAPER_EFFICIENCY:.0%} on {PAPER_NODES} nodes):",
        "",
        "| nodes | devices | global batch | step s | tokens/s | efficiency |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for nodes in sorted(scenario["scaling_nodes"]):
        scaling = weak_scaling(s, m, nodes)
        if scaling is None:
            lines.append(f"| {nodes} | | | | | one replica needs more nodes |")
            continue
        at = scaling.scaled
        lines.append(
            f"| {scaling.nodes} | {at.shape.world:,} | {at.shape.batch_size:,} | {at.step_seconds:,.3f} | "
            f"{at.tokens_per_s:,.0f} | {_percent(scaling.efficiency)} |"
        )
    return lines


def _machine_section(names: list[str]) -> list[str]:
    from seqvit.machines import machine_path

    lines = ["## Machine figures", ""]
    for name in names:
        path = machine_path(name)
        m = load_machine(name)
        shown = f"config/machines/{path.name}" if path.parent.name == "machines" else str(path)
        lines += [
            f"`{shown}`: {m.description}.",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| device memory | {m.memory / GB:g} GB, of which the runtime keeps {m.overhead / GB:g} GB |",
            "| peak dense matrix FLOP/s | "
            + ", ".join(f"{p} {v / 1e12:g} T" for p, v in sorted(m.peak_flops.items()))
            + " |",
            f"| achieved / peak FLOP/s of a step (efficiency) | {m.efficiency:g} |",
            f"| devices per node | {m.devices_per_node} |",
        ]
        for level in m.levels:
            lines.append(
                f"| link inside {level.name} ({level.ranks} ranks) | {level.bandwidth / 1e9:g} GB/s per direction, "
                f"{level.latency * 1e6:g} us |"
            )
        lines.append(
            f"| network between nodes | {m.node_bandwidth / 1e9:g} GB/s per node and direction, "
            f"{m.network_latency * 1e6:g} us |"
        )
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line[1:].strip())
        if header:
            lines += ["", "Sources and caveats, as the machine file states them:", ""]
            lines += [f"> {line}" if line else ">" for line in header]
        lines.append("")
    return lines


def _validation_section() -> list[str]:
    lines = ["## CPU validation: predicted against measured", ""]
    path = VALIDATION
    if not path.is_file():
        return lines + [
            f"Not generated yet: `benchmarks/plan_validation.py` writes `{VALIDATION.as_posix()}` (runs on this "
            f"machine's CPU compared with the planner's memory and time), and `seqvit plan --markdown` then "
            f"includes it here.",
        ]
    text = path.read_text().strip().splitlines()
    # its headings one level down, under this section's
    return (
        lines
        + [f"From `{VALIDATION.as_posix()}` (written by `benchmarks/plan_validation.py`):", ""]
        + [f"#{line}" if line.startswith("#") else line for line in text]
    )


def markdown(config_paths=None, overrides=(), machine_name: str | None = None) -> str:
    """The planner's document: tables for the shipped Frontier configs (or for `config_paths`, merged)."""
    from seqvit.config import load_configs

    if config_paths:
        shown = ", ".join(str(p) for p in config_paths)
        sections = [("Predictions", shown, load_configs(list(config_paths), list(overrides)))]
    else:
        titles = ("Frontier: the sequence-length sweep", "Frontier: the paper's scale claims")
        sections = [
            (title, rel, load_configs([_shipped(rel)], list(overrides))) for title, rel in zip(titles, DOC_CONFIGS)
        ]
    machines = sorted({machine_name or cfg.get("machine") or DEFAULT_MACHINE for _, _, cfg in sections})
    lines = [
        "# Planning a run: `seqvit plan`",
        "",
        "<!-- Written by `seqvit plan --markdown` (src/seqvit/plan/report.py) from the configs and machine files it "
        "names: edit those and regenerate; tests/test_plan_suggest.py fails when this file is stale. -->",
        "",
        *_INTRO,
    ]
    for title, shown, cfg in sections:
        lines += ["", *_config_section(title, shown, cfg, machine_name)]
    lines += ["", *_PAPER_NOTES, "", *_open_question(sections[0][2], machine_name)]
    lines += ["", *_machine_section(machines), *_MODEL, "", *_validation_section()]
    return "\n".join(lines).rstrip() + "\n"


OPEN_TOKENS = (188_416, 1_036_800)  # the paper's full-attention 188K tokens and the sweep's p=1 sequence
OPEN_NODES = (8, 32, 256)


def _open_question(cfg: dict, machine_name: str | None) -> list[str]:
    """Which method and (inner, outer) split is predicted fastest for the long sequences at a few node counts."""
    from seqvit.plan.estimate import TWO_LEVEL
    from seqvit.plan.suggest import fastest_on, question_shape, split_label

    machine = load_machine(machine_name or cfg.get("machine") or DEFAULT_MACHINE)
    lines = [
        "## Which sequence-parallel method, on how many nodes",
        "",
        f"The fastest predicted layout that fits and fills the nodes on {machine.name}, with the first config's "
        f"model, batch, ZeRO stage and checkpointing (`seqvit.plan.suggest.fastest_on`: sp, dp, accumulation and "
        "method vary; (inner, outer) are the ranks of the Ulysses all-to-all and of LSS or ring), and the "
        "fastest two-level layout for comparison:",
        "",
        "| tokens | nodes | fastest: method (inner, outer) | dp | micro x acc | step s | peak GB | fastest two-level | step s |",
        "|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for tokens in OPEN_TOKENS:
        shape, _ = question_shape(cfg, tokens=tokens)
        for nodes in OPEN_NODES:
            best = fastest_on(shape, machine, cfg, nodes)
            two = fastest_on(shape, machine, cfg, nodes, methods=TWO_LEVEL)
            if best is None:
                lines.append(f"| {tokens:,} | {nodes} | nothing fits | | | | | | |")
                continue
            s = best.shape
            other = (split_label(two.shape), f"{two.step_seconds:.1f}") if two is not None else ("none fits", "")
            lines.append(
                f"| {tokens:,} | {nodes} | {split_label(s)} | {s.dp} | {s.micro_batch} x {s.grad_accumulation} | "
                f"{best.step_seconds:.1f} | {best.peak / GB:.1f} | {other[0]} | {other[1]} |"
            )
    lines += [
        "",
        "Ring attention computes its blocks in fp32 with an explicit softmax (not the fused kernel) and holds "
        "one block of n x n scores per head (memory quadratic in n), so it is priced at the fp32 matmul rate and "
        "predicted slower than the others here; the figures share the uncalibrated latencies and efficiency of the machine file.",
    ]
    return lines


def write_markdown(path: Path, config_paths=None, overrides=(), machine_name: str | None = None) -> Path:
    from seqvit.io import atomic_path

    text = markdown(config_paths, overrides, machine_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


_INTRO = """\
`seqvit plan --config C [--patch-size P] [--set k=v] [--machine NAME]` predicts, for every
training run of a config (one per patch size), the memory of one rank, the FLOPs and time of one
step, tokens/s and MFU, on a machine described as data in `config/machines/NAME.yaml`
(`frontier`, `h200`, `cpu-local`; the config key `machine`, default `cpu-local`, or `--machine`).
Nothing runs on a device. It prints one table per run and a summary, and exits with status 1
when a run does not fit, with one line per such run naming its predicted peak, the capacity and
the cheapest change that makes it fit, tried in this order: activation checkpointing on, more
gradient accumulation (down to micro-batch 1), a higher ZeRO stage, Ulysses or a larger sp, more
data-parallel replicas.

The planner is part of the workflow: under a Slurm profile (`profiles/frontier`,
`profiles/ci-slurm`) Snakemake refuses, before submitting anything and in dry runs too, a config
with a run that does not fit, and gives every training job a walltime from the prediction
(below).

- `seqvit plan --config C --suggest --patch-size P` (or `--tokens N` for a sequence of N tokens
  with the config's model) ranks the layouts of that run that fit, best predicted tokens/s first:
  sequence-parallel degree and method, data-parallel replicas, micro-batch and accumulation, ZeRO
  stage, activation checkpointing, nodes (at most the run's own, or the fewest on which any layout
  fits; `--max-nodes M` for more). The model, the global batch, the precision and the attention
  kernel stay as configured. A layout is tried only if training would accept it: the checks
  training runs (`parallel/groups.py` `check_layout`: heads divisible by sp for Ulysses, tokens,
  world and batch; the accumulation; `train/slurm.py` `job_shape`: sequence-parallel groups fill
  whole nodes, a partition takes the nodes) are called, not restated. Methods with the very same
  prediction (Ulysses and DeepSpeed's Ulysses) share a row.
- `seqvit plan --markdown [PATH]` writes this document (default `docs/scale.md`) from
  `config/frontier-seqscale.yaml` and `config/frontier-paper-claims.yaml`, or from `--config`.

### Walltime of training jobs

Unless the config pins it (`parallel.runs.P.train_minutes`, else `cluster.train_minutes`), a
training job's walltime is `train.steps` x the predicted step time x (1 + `cluster.walltime_margin`,
default 0.25: validation, checkpoints and an estimate that is low), plus per job
`cluster.startup_minutes` (default 10: launch, imports, loading a checkpoint) and
`cluster.signal_seconds` (after Slurm's USR1 the job checkpoints and stops). The partition is the
first of `cluster.partitions` that takes the nodes and allows that whole walltime, else the first
that takes the nodes; a run longer than its limit is split: each job gets the limit, and the
retry that resumes from its checkpoint (Snakemake's `attempt`) gets what remains, the last one
less. A retry beyond the predicted number of jobs gets the whole limit. The dry run shows each
job's sbatch options and the prediction; a run predicted to need more than one job is named in a
warning with the number of jobs (Snakemake resubmits as often as the profile's `retries` allow;
running Snakemake again continues from the newest checkpoint). The walltime keys and the
prediction are left out of the train rule's params, so changing them retrains nothing.

### Weak scaling

The efficiency columns keep each run's batch per replica, micro-batch and accumulation and add
replicas: from the fewest nodes that hold whole replicas (one node, or one replica's nodes when
its sequence-parallel group spans several) to the target node count. Compute per device stays the
same, so the efficiency (tokens/s per device at scale over that at the base) is the ratio of
predicted step times; what changes is the gradient all-reduce (ZeRO: reduce-scatter and
all-gather) over the larger world, whose traffic crosses the network once replicas span nodes and
whose ring latency grows with the number of ranks.""".splitlines()


_PAPER_NOTES = f"""\
## The paper's claims on paper

{PAPER} reports: sequences up to 1M tokens with sequence parallelism (DeepSpeed-Ulysses and
Long-Sequence-Segmentation with model sharding); the first training with full attention over a
188K-token sequence; models up to 10B parameters, which needed hybrid sequence, pipeline and
tensor parallelism and flash attention; and {PAPER_EFFICIENCY:.0%} batch-scaling efficiency on
2,048 MI250X GCDs ({PAPER_NODES} nodes). `config/frontier-paper-claims.yaml` sets these up for this
planner; where it cannot follow the paper, it says so:

- Tensor and pipeline parallelism do not exist in this project. The ~10B-parameter scenario runs
  on sequence and data parallelism with ZeRO-3 over all ranks instead, so its predicted memory
  and time are those of that layout, not of the paper's.
- The planner knows no model or layout of the paper's runs beyond the abstract's figures; the
  scenarios use this project's ViT (`model/vit.py`) with widths chosen to reach the sizes named,
  and the grid of the sweep. No patch size of the 720 x 1440 grid gives 188K tokens, so that
  scenario sets the sequence length (188,416 = 2^11 x 92 tokens, which splits evenly over
  power-of-two sp) and keeps 2 x 2-pixel tokens.
- The abstract does not say which model, sequence and batch its scaling runs used; the
  weak-scaling scenario is one replica of sp=8 per node at 64,800 tokens. The predicted
  efficiency depends mostly on the step time against the gradient all-reduce: the columns above
  show it for every run, lowest for the shortest sequences (the shortest steps).
- The weak-scaling figures come from the collective model of the machine file (ring algorithms,
  no overlap of communication with compute, latencies that are guesses); the paper's 94% is a
  measurement. Agreement or disagreement between them validates nothing until the latencies and
  the efficiency factor are calibrated.""".splitlines()


_MODEL = """\
## The model (src/seqvit/plan/estimate.py)

Per rank, with micro-batch b, n = ceil(N / sp) local tokens, width E, MLP width F, H heads, bytes a
per activation (bf16 2, fp32 4), and Phi parameters counted module by module as model/vit.py builds
them (checked against the built model in the tests); the module docstring has every term:

- weights and gradients a Phi each (bf16: 4 Phi more, DeepSpeed's fp32 gradient accumulation);
  AdamW 12 Phi in bf16 or under ZeRO (fp32 master, m, v), 8 Phi otherwise; ZeRO stage 1/2/3 divides
  optimizer/gradients/weights by all sp x dp ranks; stages 1-3 add DeepSpeed's reduce bucket.
- saved activations per block b n a (8 E + 2 F) + 4 b n H (softmax statistics), plus per method:
  Ulysses (and the inner level of the two-level methods) E more; LSS the gathered K and V of the
  whole sequence, 2 N E / I (I = `parallel.sp_inner`, 1 for one-level LSS); ring its fp32 output
  (4 n E bytes). The math kernel adds its scores, N wide (a window's w^2 under window attention).
  With activation checkpointing only the block inputs, plus one block recomputed.
- the backward working set, the largest of three moments: the MLP backward; the attention
  backward with the kernel's dK/dV and the exchange buffers (Ulysses send and receive; LSS one
  chunk of heads of the gathered dK/dV and its fp32 reduce-scatter buffer; ring two K/V blocks,
  one fp32 block of scores and probabilities over the outer block, the travelling fp32 dK/dV and
  dq); the channel aggregation's backward once the blocks are freed.
- peak = persistent state + saved activations + that working set + the machine's runtime overhead.
- time = matmul FLOPs (seqvit.train.throughput; window attention counts its windows' pairs) plus
  one forward of the blocks under checkpointing, over peak x efficiency; attention FLOPs over the
  machine's attention rate (ring: the fp32 matmul rate, plus its explicit softmax's fp32 traffic
  where the machine file measures elementwise rates); elementwise traffic and framework overhead
  where measured; plus every collective, not overlapped with compute: Ulysses all-to-all (over the
  inner sp_inner ranks for the two-level methods), LSS all-gather and reduce-scatter, ring sends
  (P - 1 hops of the K/V block forward, of K/V and fp32 dK/dV backward), gradient all-reduce or
  ZeRO's collectives. Each is priced at the bandwidth and latency of the smallest level of the
  machine holding the ranks it spans (an outer group spans the whole sequence-parallel group),
  or through the node's network injection bandwidth across nodes; a ring hop at the level's own
  figures (machine files measure no point-to-point figure).

## Assumptions and what is not validated

- The machine figures come from vendor and centre documentation (cited in each file, quoted
  above); latencies, runtime overheads and efficiency factors are guesses, and `cpu-local` is
  entirely to be calibrated.
- Allocator fragmentation, temporaries of the embedding and loss, and DeepSpeed's own buffers
  (bucket sizes, fp32 gradient accumulation of its bf16 optimizer) are only in the fixed
  overhead.
- The activation count follows the saved tensors of the code as read, not a profile.
- Host memory (loader workers, the float64 construction of the position table) is not modelled.
- Walltimes add a margin to predicted step times that are themselves uncalibrated on Frontier;
  validation passes and checkpoint writing are not modelled, only covered by the margin.""".splitlines()
