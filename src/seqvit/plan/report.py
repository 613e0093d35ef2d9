"""Plans of every run of a config, as readable tables (seqvit plan)."""

from __future__ import annotations

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
