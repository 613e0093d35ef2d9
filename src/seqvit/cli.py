"""The `seqvit` command: one subcommand per pipeline stage (the Snakemake rules call these)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from seqvit.errors import SeqvitError

log = logging.getLogger("seqvit")


def _config(args):
    from seqvit.config import load_configs

    return load_configs(args.config, getattr(args, "set", None) or [])


def cmd_synth(args):
    from seqvit.data.synthetic import synthesize
    from seqvit.layout import Layout

    cfg = _config(args)
    paths = synthesize(cfg, Path(args.out) if args.out else Layout(cfg).raw_dir, progress=not args.quiet)
    print(f"wrote {len(paths)} files")


def cmd_download(args):
    from seqvit.data.sources import describe, download, find_request, plan_requests
    from seqvit.layout import Layout

    cfg = _config(args)
    raw_dir = Layout(cfg).raw_dir
    if args.plan:
        requests = [find_request(cfg, r) for r in args.request] if args.request else plan_requests(cfg)
        for line in describe(requests, raw_dir):
            print(line)
        return
    outcome = download(cfg, args.request or None, raw_dir)
    fetched = sum(1 for v in outcome.values() if v == "fetched")
    print(f"{fetched} files fetched and verified, {len(outcome) - fetched} already verified, under {raw_dir}")


def cmd_regrid(args):
    from seqvit.data.regrid_files import regrid_files

    *inputs, output = args.files
    if not inputs:
        raise SeqvitError(
            "regrid needs at least one input file and one output file: seqvit regrid IN.nc [IN.nc ...] OUT.nc"
        )
    raw_lineage = None
    if args.config:  # the workflow's call: refuse raw files of another source
        from seqvit import lineage

        raw_lineage = lineage.raw(_config(args))
    regrid_files([Path(p) for p in inputs], Path(output), args.grid, args.method, raw_lineage=raw_lineage)
    print(f"wrote {output}")


def cmd_stats(args):
    from seqvit.data.stats import compute_stats
    from seqvit.layout import Layout

    cfg = _config(args)
    lay = Layout(cfg)
    compute_stats(cfg, lay.regridded_all(), stats_out=lay.stats)
    print(f"wrote {lay.stats}")


def cmd_climatology(args):
    from seqvit.data.stats import compute_stats
    from seqvit.layout import Layout

    cfg = _config(args)
    lay = Layout(cfg)
    compute_stats(cfg, lay.regridded_all(), clim_out=lay.climatology)
    print(f"wrote {lay.climatology}")


def cmd_tokenize(args):
    from seqvit.data.tokenize import tokenize
    from seqvit.layout import Layout

    cfg = _config(args)
    lay = Layout(cfg)
    tokenize(cfg, lay.regridded_all(), lay.stats, args.patch_size, lay.tokens(args.patch_size))
    print(f"wrote {lay.tokens(args.patch_size)}")


def cmd_train(args):
    from seqvit.layout import Layout
    from seqvit.parallel.groups import launcher_env
    from seqvit.train.engine import train

    cfg = _config(args)
    lay = Layout(cfg)
    run_dir, cfg = _run(lay, cfg, args)
    train(
        cfg,
        lay.tokens(args.patch_size),
        run_dir,
        args.patch_size,
        progress=not args.quiet,
        restart_if_changed=args.restart_if_changed,
    )
    if launcher_env()["rank"] == 0:  # under torchrun / srun only rank 0 writes and reports
        print(f"wrote {run_dir}")


def _run(lay, cfg: dict, args) -> tuple[Path, dict]:
    """(run folder, config) of --run-name NAME (its window and seed applied), or of the patch size's full run."""
    if not getattr(args, "run", None):
        return lay.run_dir(args.patch_size), cfg
    lay.check_sweep()
    run = lay.run(args.run)
    if run.patch_size != args.patch_size:
        raise SeqvitError(f"--run-name {args.run} has patch size {run.patch_size}, not --patch-size {args.patch_size}")
    return lay.run_dir(run), lay.run_config(args.run)


def cmd_predict(args):
    from seqvit.layout import Layout
    from seqvit.parallel.groups import launcher_env
    from seqvit.train.predict import predict

    cfg = _config(args)
    lay = Layout(cfg)
    run_dir, cfg = _run(lay, cfg, args)
    out = lay.prediction(args.run or f"vit-p{args.patch_size}")
    predict(cfg, run_dir, lay.tokens(args.patch_size), lay.stats, out, sp=args.sp)
    if launcher_env()["rank"] == 0:  # under torchrun / srun only rank 0 writes and reports
        print(f"wrote {out}")


def cmd_baseline(args):
    from seqvit.evaluate.baselines import run_baseline
    from seqvit.layout import Layout

    cfg = _config(args)
    lay = Layout(cfg)
    out = lay.prediction(args.name)
    run_baseline(cfg, args.name, lay.regridded_all(), lay.stats, lay.climatology, out)
    print(f"wrote {out}")


def cmd_evaluate(args):
    from seqvit.evaluate.report import evaluate
    from seqvit.layout import Layout

    cfg = _config(args)
    lay = Layout(cfg)
    names = lay.model_names() + lay.baseline_names()
    train_logs = lay.train_logs()
    evaluate(
        cfg,
        {n: lay.prediction(n) for n in names},
        lay.regridded_all(),
        lay.climatology,
        lay.eval_dir,
        train_logs=train_logs,
    )
    print(f"wrote {lay.eval_dir / 'metrics.csv'}")


def cmd_provenance(args):
    import os

    from seqvit.layout import Layout
    from seqvit.provenance.crate import build_provenance
    from seqvit.provenance.record import SNAKEFILE_ENV

    cfg = _config(args)
    lay = Layout(cfg)
    out = build_provenance(
        cfg,
        lay,
        [Path(p) for p in args.config],
        Path(args.snakemake_dir),
        validate=not args.no_validate,
        record_hosts=args.record_hosts,
        snakefile=Path(args.snakefile or os.environ.get(SNAKEFILE_ENV) or "Snakefile"),
    )
    print(f"wrote {out}")


def cmd_paths(args):
    """Print the files the workflow produces for a config (handy for scripts and checks)."""
    from seqvit.layout import Layout

    lay = Layout(_config(args))
    print(lay.root)
    if args.results:
        return
    for name in lay.model_names() + lay.baseline_names():
        print(lay.prediction(name))
    print(lay.eval_dir / "metrics.csv")


def cmd_plan(args):
    """Predicted memory, time and fit of every run; exit 1 when one does not fit."""
    from seqvit.plan import format_plan, misfit_line, plan_config, summary_row

    if args.markdown:  # docs/scale.md: the shipped Frontier configs' tables, or those of --config
        from seqvit.plan.report import write_markdown

        print(f"wrote {write_markdown(Path(args.markdown), args.config, args.set or [], args.machine)}")
        return
    if args.calibrate:  # measure this machine into its machine file (seqvit.plan.calibrate)
        from seqvit.plan.calibrate import calibrate

        print(f"wrote {calibrate(args.machine or 'cpu-local')}")
        return
    if not args.config:
        raise SeqvitError("seqvit plan needs --config C (only --markdown has default configs)")
    cfg = _config(args)
    if args.suggest or args.tokens:
        from seqvit.plan.suggest import format_suggestions, suggest_config

        result = suggest_config(cfg, args.patch_size, args.tokens, args.machine, args.max_nodes)
        print(format_suggestions(result))
        if not result.ranked:
            raise SystemExit(1)
        return
    plans = plan_config(cfg, [args.patch_size] if args.patch_size else None, args.machine)
    for plan in plans:
        print(format_plan(plan))
        print()
    print("summary")
    for plan in plans:
        print("  " + summary_row(plan))
    misfits = [plan for plan in plans if not plan.fits]
    for plan in misfits:
        print(misfit_line(plan), file=sys.stderr)
    if misfits:
        raise SystemExit(1)


_RUN_HELP = (
    "the run of the sweep, e.g. vit-win-p8-s1: window attention for vit-win-* runs (sweep.window), its seed as "
    "train.seed for -s<seed> runs (train.seeds), its own folder train/win-p8-s1 (default: vit-p<P>)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqvit",
        description="Rerun the ViT sequence-length experiment on ERA5, one stage at a time "
        "(Snakemake runs them all: make demo).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name, func, help_text, config=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument(
                "--config",
                action="append",
                required=True,
                metavar="C",
                help="YAML config (repeat to merge several, later ones win)",
            )
            p.add_argument(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="override a dotted config key, e.g. --set train.steps=100",
            )
        p.set_defaults(func=func)
        return p

    p = stage("synth", cmd_synth, "write the embedded ERA5-like source in the CDS netCDF layout")
    p.add_argument("--out", help="folder for the raw files (default: <results>/raw)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = stage(
        "download",
        cmd_download,
        "fetch raw ERA5 from source.kind (cds, weatherbench2, local), verify it, then rename it into place",
    )
    p.add_argument("--plan", action="store_true", help="print the requests (one raw file each) and send nothing")
    p.add_argument(
        "--request",
        action="append",
        metavar="ID",
        help="only this request, e.g. pressure-levels/1979/01 (repeatable; ids from --plan)",
    )

    p = stage("regrid", cmd_regrid, "regrid ERA5-layout netCDF to a named grid", config=False)
    p.add_argument(
        "--config",
        action="append",
        metavar="C",
        help="YAML config: refuse raw files made by another source than its source section (the workflow passes it)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted config key")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="IN.nc [IN.nc ...] OUT.nc (inputs are concatenated in time)"
    )
    p.add_argument("--grid", default="5.625deg", help="target grid: 5.625deg, 2.8125deg, 1.40625deg, 1deg, 0.25deg")
    p.add_argument("--method", default="conservative", choices=["conservative", "bilinear"])

    stage("stats", cmd_stats, "mean and standard deviation per channel over the training years (stats.nc)")
    stage(
        "climatology",
        cmd_climatology,
        "smoothed day-of-year x hour-of-day climatology over stats.climatology_years (climatology.nc)",
    )

    p = stage("tokenize", cmd_tokenize, "normalize and cut the fields into patch tokens (zarr)")
    p.add_argument("--patch-size", type=int, required=True, metavar="P")

    p = stage(
        "train",
        cmd_train,
        "train the ViT for one patch size on DeepSpeed (resumes from its newest checkpoint; SIGTERM or SIGUSR1 "
        "checkpoint and exit with status 75); under torchrun or srun with --set parallel.sp=P the token sequence "
        "of each sample is split over P processes",
    )
    p.add_argument("--patch-size", type=int, required=True, metavar="P")
    p.add_argument("--run-name", dest="run", metavar="NAME", help=_RUN_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--restart-if-changed",
        action="store_true",
        help="checkpoints written with other settings are moved to checkpoints.previous/ and training starts "
        "afresh (without it they are refused)",
    )

    p = stage(
        "predict",
        cmd_predict,
        "forecast the test years with a trained ViT, written in chunks of evaluate.predict_chunk init times; under "
        "torchrun or srun each sample's token sequence is split over the training run's sp ranks (or --sp) and the "
        "init times over the replicas",
    )
    p.add_argument("--patch-size", type=int, required=True, metavar="P")
    p.add_argument(
        "--sp", type=int, default=None, metavar="P", help="sequence-parallel ranks per sample (default: the run's)"
    )
    p.add_argument("--run-name", dest="run", metavar="NAME", help=_RUN_HELP)

    p = stage("baseline", cmd_baseline, "forecast the test years with a baseline")
    p.add_argument("--name", required=True, choices=["climatology", "persistence", "linear"])

    stage("evaluate", cmd_evaluate, "latitude-weighted RMSE/ACC of every model and baseline, table and figures")
    p = stage(
        "provenance",
        cmd_provenance,
        "Workflow Run RO-Crate (one action per Snakemake job, checksums, config, git, versions, hardware), "
        "methods.md and LaTeX tables under <results>/provenance",
    )
    p.add_argument(
        "--snakemake-dir", default=".snakemake", metavar="DIR", help="Snakemake's state folder (job records)"
    )
    p.add_argument(
        "--snakefile",
        metavar="FILE",
        help="the workflow's main Snakefile; it and its rules (workflow/) go into the crate (default: the one the "
        "workflow names in SEQVIT_SNAKEFILE, else ./Snakefile)",
    )
    p.add_argument("--no-validate", action="store_true", help="skip the RO-Crate validator even when it is installed")
    p.add_argument(
        "--record-hosts",
        action="store_true",
        help="also record the host name of this machine and of each local job (default: no host names)",
    )
    p = stage(
        "plan",
        cmd_plan,
        "predict memory per rank, FLOPs, step time and MFU of each training run on a machine "
        "(config/machines/NAME.yaml) before it is submitted; exit status 1 when a run does not fit",
        config=False,
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="C",
        help="YAML config (repeat to merge several, later ones win); required except with --markdown",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted config key")
    p.add_argument(
        "--suggest",
        action="store_true",
        help="rank the layouts of one run (--patch-size P or --tokens N) that fit, best predicted tokens/s first",
    )
    p.add_argument(
        "--tokens", type=int, metavar="N", help="with --suggest: a sequence of N tokens of the config's model"
    )
    p.add_argument(
        "--max-nodes",
        type=int,
        metavar="M",
        help="with --suggest: layouts on at most M nodes (default: the run's own nodes, or the fewest that fit)",
    )
    p.add_argument(
        "--markdown",
        nargs="?",
        const="docs/scale.md",
        metavar="PATH",
        help="write the planner's document (default docs/scale.md) for config/frontier-seqscale.yaml and "
        "config/frontier-paper-claims.yaml, or for --config",
    )
    p.add_argument("--patch-size", type=int, metavar="P", help="only this run (default: every tokenize.patch_sizes)")
    p.add_argument(
        "--machine", metavar="NAME", help="machine file config/machines/NAME.yaml (default: config key machine)"
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine (matmul, attention and elementwise rates, gloo collectives, tiny training runs) "
        "and write the figures into its machine file (--machine, default cpu-local), keeping its comments",
    )
    p = stage("paths", cmd_paths, "print the results folder and the main output paths of a config")
    p.add_argument("--results", action="store_true", help="print only the results folder (make report uses it)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    start = time.perf_counter()
    try:
        args.func(args)
    except SeqvitError as exc:
        if args.verbose:
            raise
        print(f"seqvit {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
