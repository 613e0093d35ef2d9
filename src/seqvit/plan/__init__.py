"""Predict the memory, time and scaling of a training run from its config, before it is submitted."""

from seqvit.plan.estimate import Plan, RunShape, cheapest_fix, parameter_count, plan_run, run_shape
from seqvit.plan.machine import Machine, load_machine
from seqvit.plan.report import format_plan, misfit_line, plan_config, refuse_misfits, summary_row

__all__ = [
    "Machine",
    "Plan",
    "RunShape",
    "cheapest_fix",
    "format_plan",
    "load_machine",
    "misfit_line",
    "parameter_count",
    "plan_config",
    "plan_run",
    "refuse_misfits",
    "run_shape",
    "summary_row",
]
