"""methods.md: an editable methods paragraph written from the config, the results and the run record.

The text is a starting point for a paper: every number in it comes from the files of this run
(config, eval/metrics.csv, eval/seqlen_change.csv, the environment record), never typed by hand.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd

from seqvit.data.stats import climatology_years

REFERENCES = {
    "tsaris2024": "Tsaris, A. et al. (2024). Sequence Length Scaling in Vision Transformers for Scientific Images on "
    "Frontier. arXiv:2405.15780.",
    "hersbach2020": "Hersbach, H. et al. (2020). The ERA5 global reanalysis. Q. J. R. Meteorol. Soc. 146, 1999-2049. "
    "doi:10.1002/qj.3803.",
    "rasp2024": "Rasp, S. et al. (2024). WeatherBench 2: A benchmark for the next generation of data-driven global "
    "weather models. J. Adv. Model. Earth Syst. 16, e2023MS004019. doi:10.1029/2023MS004019.",
    "nguyen2023": "Nguyen, T. et al. (2023). ClimaX: A foundation model for weather and climate. ICML 2023. "
    "arXiv:2301.10343.",
    "dosovitskiy2021": "Dosovitskiy, A. et al. (2021). An image is worth 16x16 words: Transformers for image "
    "recognition at scale. ICLR 2021. arXiv:2010.11929.",
    "jacobs2023": "Jacobs, S. A. et al. (2023). DeepSpeed Ulysses: System optimizations for enabling training of "
    "extreme long sequence Transformer models. arXiv:2309.14509.",
    "molder2021": "Mölder, F. et al. (2021). Sustainable data analysis with Snakemake. F1000Research 10:33. "
    "doi:10.12688/f1000research.29032.2.",
    "soilandreyes2022": "Soiland-Reyes, S. et al. (2022). Packaging research artefacts with RO-Crate. Data Science 5, "
    "97-138. doi:10.3233/DS-210053.",
    "leo2024": "Leo, S. et al. (2024). Recording provenance of workflow runs with RO-Crate. PLOS ONE 19, e0309210. "
    "doi:10.1371/journal.pone.0309210.",
    "liu2021": "Liu, Z. et al. (2021). Swin Transformer: Hierarchical vision transformer using shifted windows. "
    "ICCV 2021. arXiv:2103.14030.",
    "politis2004": "Politis, D. N. and White, H. (2004). Automatic block-length selection for the dependent "
    "bootstrap. Econometric Reviews 23, 53-70 (correction: Patton, A., Politis, D. N. and White, H. (2009), "
    "Econometric Reviews 28, 372-375).",
}

_SOURCES = {
    "synthetic": "an embedded ERA5-like synthetic source written in the layout the Copernicus Climate Data Store "
    "delivers (a stand-in for ERA5 [hersbach2020] in the demonstration; not real observations)",
    "cds": "ERA5 [hersbach2020] downloaded from the Copernicus Climate Data Store",
    "weatherbench2": "ERA5 [hersbach2020] from the WeatherBench 2 stores [rasp2024]",
    "local": "ERA5 [hersbach2020] files from a local archive",
}


def _years(years) -> str:
    years = [int(y) for y in years]
    if len(years) > 2 and years == list(range(years[0], years[-1] + 1)):
        return f"{years[0]}-{years[-1]}"
    return ", ".join(str(y) for y in years)


_SP_METHODS = {
    "ulysses": "DeepSpeed-Ulysses sequence parallelism [jacobs2023] (our implementation: one all-to-all of queries, "
    "keys and values, so that each rank attends over the whole sequence for its share of the heads)",
    "deepspeed-ulysses": "DeepSpeed's DistributedAttention (DeepSpeed-Ulysses [jacobs2023]: all-to-all of queries, "
    "keys and values over the heads)",
    "lss": "Long-Sequence-Segmentation (LSS) [tsaris2024]: each rank keeps its segment of queries and gathers the "
    "keys and values of the whole group",
    "ring": "ring attention (Liu et al. 2023, arXiv:2310.01889): each rank keeps its segment of queries while the keys and values of the "
    "other segments pass around the ring of the group, the partial results merged by log-sum-exp rescaling",
    "ulysses-lss": "two-level sequence parallelism: a DeepSpeed-Ulysses all-to-all [jacobs2023] inside groups of "
    "adjacent ranks, then Long-Sequence-Segmentation [tsaris2024] across those groups",
    "ulysses-ring": "two-level sequence parallelism: a DeepSpeed-Ulysses all-to-all [jacobs2023] inside groups of "
    "adjacent ranks, then ring attention (Liu et al. 2023, arXiv:2310.01889) across those groups",
}
_BASELINE_TEXT = {
    "climatology": "climatology",
    "persistence": "persistence",
    "linear": "a linear regression per lead time fitted on the training years",
}
# The line `seqvit train` logs at the end of a run: "... MFU x% of y TFLOP/s (where the peak came from)".
_PEAK_LINE = re.compile(r"MFU \S+% of \S+ TFLOP/s \((.+)\)\s*$")


def _versions(env: dict) -> str:
    pkgs = env.get("packages", {})
    keys = ["seqvit", "torch", "snakemake", "xarray", "numpy", "scikit-learn", "rocrate"]
    return ", ".join(f"{k} {pkgs[k]}" for k in keys if pkgs.get(k))


def _list(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _parallelism(cfg: dict) -> str:
    """Each run's sequence-parallel degree SP and data-parallel replicas DP, from the config."""
    from seqvit.runs import run_parallelism

    patch_sizes = [int(p) for p in cfg["tokenize"]["patch_sizes"]]
    layouts = {p: run_parallelism(cfg, p) for p in patch_sizes}
    method = (cfg.get("parallel") or {}).get("sp_method", "ulysses")
    if all(sp == 1 for sp, _ in layouts.values()):
        if all(dp == 1 for _, dp in layouts.values()):
            return "Training ran without sequence parallelism (one process per run). "
        return (
            "Training ran without sequence parallelism; the batch was split over data-parallel replicas: "
            + "; ".join(f"p = {p}: {dp} replica{'s' if dp != 1 else ''}" for p, (_, dp) in layouts.items())
            + ". "
        )

    def one(p, sp, dp):
        replicas = f"{dp} data-parallel replica{'s' if dp != 1 else ''} ({sp * dp} processes)"
        split = "no sequence parallelism" if sp == 1 else f"sequence split over SP = {sp} ranks"
        return f"p = {p}: {split}, {replicas}"

    return (
        "Where SP > 1, each sample's token sequence was split into SP contiguous segments (latitude stripes), one "
        f"per rank of a sequence-parallel group, with {_SP_METHODS.get(method, method)}; within a group only "
        "attention communicates. Per run (config `parallel`): "
        + "; ".join(one(p, sp, dp) for p, (sp, dp) in layouts.items())
        + ". "
    )


def _job_for(jobs, path: Path, workdir: Path) -> dict | None:
    """The Snakemake job record that produced `path`."""
    target = (workdir / path).resolve()
    for job in jobs or []:
        if any((workdir / out).resolve() == target for out in job.get("output") or []):
            return job
    return None


def _sbatch_options(job: dict) -> str | None:
    """The sbatch options the train rule recorded as a param (describe_sbatch: '--nodes=...')."""
    for value in job.get("params") or []:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)  # Snakemake records params as their repr
            except (ValueError, SyntaxError):
                pass
        if isinstance(value, str) and value.startswith("--nodes="):
            return value
    return None


def _device_from_log(log: Path) -> str | None:
    """The device named in the last throughput line of a training log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _PEAK_LINE.search(line)
        if not match:
            continue
        source = match.group(1)
        gpu = re.search(r"device '([^']+)'", source)
        if gpu:
            return gpu.group(1)
        cpu = re.search(r"on (\d+) CPU threads?", source)
        if cpu:
            return f"CPU, {cpu.group(1)} thread{'s' if cpu.group(1) != '1' else ''}"
        return None  # the peak came from the config: the log does not name the device
    return None


def training_record(cfg: dict, layout, jobs, workdir) -> dict:
    """What the run recorded about each training run ({patch size: {...}}; a key is absent when not recorded).

    world_size and sp: the run folder's checkpoints/run.json; slurm_job_id and sbatch: Snakemake's
    job record of the train job; device: the throughput line of its log; seconds and max_rss_mb:
    its benchmark.
    """
    from seqvit.provenance.record import benchmark_for

    workdir = Path(workdir)
    out = {}
    for p in layout.patch_sizes():
        run_dir = Path(layout.run_dir(p))
        rec: dict = {}
        try:
            settings = json.loads((workdir / run_dir / "checkpoints" / "run.json").read_text())
            rec.update({k: int(settings[k]) for k in ("world_size", "sp") if k in settings})
        except (OSError, ValueError):
            pass
        job = _job_for(jobs, run_dir / "model.pt", workdir)
        logs = [workdir / log for log in (job or {}).get("log") or []]
        logs = logs or [workdir / layout.root / "logs" / "train" / f"p{p}.log"]
        device = next((d for d in map(_device_from_log, logs) if d), None)
        if device:
            rec["device"] = device
        if job is not None:
            rec["job"] = True
            if job.get("external_jobid"):
                rec["slurm_job_id"] = str(job["external_jobid"])
                sbatch = _sbatch_options(job)
                if sbatch:
                    rec["sbatch"] = sbatch
            bench = benchmark_for(job, workdir) or {}
            if bench.get("s") is not None:
                rec["seconds"] = float(bench["s"])
            if bench.get("max_rss") is not None:
                rec["max_rss_mb"] = float(bench["max_rss"])
        out[p] = rec
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _hardware(training: dict | None, env: dict) -> str:
    hw = env.get("hardware", {})
    here = (
        f"{hw.get('cpu', 'an unrecorded CPU')} ({hw.get('cpu_count', '?')} logical cores"
        + (f", {hw['gpus']}" if hw.get("gpus") else ", no GPU")
        + f") on {hw.get('os', 'an unrecorded OS')}"
    )
    built = (
        f"This report was built by `seqvit provenance` on {here}; that is the machine that built the report, "
        "not necessarily one that trained."
    )
    runs = []
    for p, rec in (training or {}).items():
        parts = []
        if rec.get("world_size"):
            n = rec["world_size"]
            parts.append(f"{n} process{'es' if n != 1 else ''}")
        if rec.get("device"):
            parts.append(f"on {rec['device']}")
        slurm = rec.get("slurm_job_id")
        if slurm:
            parts.append(f"Slurm job {slurm}" + (f" (sbatch {rec['sbatch']})" if rec.get("sbatch") else ""))
        elif rec.get("job"):
            parts.append("on the machine Snakemake ran on (no batch job)")
        if rec.get("seconds") is not None:
            parts.append(f"{_duration(rec['seconds'])} wall time" + (" of its last job" if slurm else ""))
        if rec.get("max_rss_mb") is not None:
            parts.append(f"peak resident memory {rec['max_rss_mb'] / 1024:.1f} GB")
        runs.append(f"p = {p}: {', '.join(parts) if parts else 'not recorded'}")
    if not any(rec for rec in (training or {}).values()):
        return f"The run folders and Snakemake's job records hold no record of the training hardware. {built}"
    return (
        "Training as the run recorded it (process count from checkpoints/run.json, device from the training log, "
        f"batch job and benchmark from Snakemake's job records): {'; '.join(runs)}. {built}"
    )


def methods_text(cfg: dict, env: dict, eval_dir, n_jobs: int | None = None, training: dict | None = None) -> str:
    """methods.md; `training` is training_record(...) (None: nothing recorded about the training jobs)."""
    eval_dir = Path(eval_dir)
    data, splits, model, train = cfg["data"], cfg["splits"], cfg["model"], cfg["train"]
    source = (cfg.get("source") or {}).get("kind", "synthetic")
    patch_sizes = [int(p) for p in cfg["tokenize"]["patch_sizes"]]
    channels = list(data.get("single_level", [])) + [
        f"{v} at {', '.join(str(lv) for lv in data.get('levels', []))} hPa" for v in data.get("pressure_level", [])
    ]
    samples = int(train["steps"]) * int(train["batch_size"])
    evaluate = cfg.get("evaluate") or {}
    baselines = list(evaluate["baselines"])  # the schema's default lists every baseline
    train_years, clim_years = [int(y) for y in splits["train"]], climatology_years(cfg)
    if sorted(clim_years) == sorted(train_years):
        stats_text = (
            "normalization statistics and the day-of-year and hour climatology come from the training years only."
        )
    else:
        stats_text = (
            f"normalization statistics come from the training years only, the day-of-year and hour "
            f"climatology from the years {_years(clim_years)} (config `stats.climatology_years`; no "
            "validation or test year)."
        )
    extrapolated = sorted({int(h) for h in evaluate.get("lead_hours", [])} - {int(h) for h in train["lead_hours"]})
    extrapolation_text = ""
    if evaluate.get("extrapolate_leads"):
        extrapolation_text = (
            f" Forecasts at {_list(f'{h} h' for h in extrapolated)}, lead times the model was not trained on, were made "
            "by extrapolating its lead-time embedding beyond the trained lead times (config "
            "`evaluate.extrapolate_leads`)."
            if extrapolated
            else " Extrapolation of the lead-time embedding was allowed (`evaluate.extrapolate_leads`), but every scored "
            "lead time was a trained one."
        )
    if baselines:
        against = f" The baselines were {_list(_BASELINE_TEXT.get(b, b) for b in baselines)}."
    else:
        against = " No baseline was scored (config `evaluate.baselines` is empty)."

    seqlen_text, results_text = "", ""
    change_path, metrics_path = eval_dir / "seqlen_change.csv", eval_dir / "metrics.csv"
    if change_path.exists():
        change = pd.read_csv(change_path)
        cols = [c for c in change.columns if c.startswith("rmse_L")]
        lengths = [c[len("rmse_L") :].split("_p")[0] for c in cols]
        if lengths:
            seqlen_text = f" The sequence lengths are {', '.join(lengths)} tokens per sample."
        rows = [r for _, r in change.iterrows() if not pd.isna(r["change_pct"])]
        with_ci = "change_low_pct" in change.columns
        parts = [
            f"{r['variable']} at {int(r['lead_hours'])} h {float(r['change_pct']):+.1f}%"
            + (f" [{float(r['change_low_pct']):+.1f}, {float(r['change_high_pct']):+.1f}]" if with_ci else "")
            for r in rows
        ]
        if parts:
            results_text += (
                " From the shortest to the longest sequence the headline RMSE of the ViT changed by "
                + "; ".join(parts)
                + (" (95% intervals in brackets)" if with_ci else "")
                + " (tables/sequence_length.tex; [tsaris2024] report about 20% on ERA5)."
            )
            if with_ci:
                results_text += " " + _verdict(rows)
    results_text += _windows_text(eval_dir / "windows_vs_full.csv")
    if metrics_path.exists():
        m = pd.read_csv(metrics_path)
        lead = int(m["lead_hours"].max())
        var = "t2m" if "t2m" in set(m["variable"]) else str(m["variable"].iloc[0])
        sel = m[(m["variable"] == var) & (m["lead_hours"] == lead)]
        scores = ", ".join(f"{r['model']} {r['rmse']:.2f}" for _, r in sel.iterrows())
        results_text += f" Headline {lead} h RMSE of {var}: {scores} (tables/rmse.tex)."

    if metrics_path.exists() and "rmse_low" in pd.read_csv(metrics_path, nrows=1).columns:
        results_text += (
            " Intervals come from a circular block bootstrap over the test initialisation times, with the block "
            "length chosen automatically to cover the autocorrelation of the per-time errors [politis2004]; "
            "changes between models are paired (the same resampled times for both)."
        )

    para = [
        "# Methods (generated by `seqvit provenance`; edit freely)",
        "",
        f"**Data.** We used {_SOURCES.get(source, source)}: {', '.join(channels)} at {_hours(data)} UTC for the years "
        f"{_years(data['years'])}, regridded {cfg.get('regrid', {}).get('method', 'conservative')}ly to the "
        f"{cfg['grid']} grid. The years {_years(splits['train'])} were used for training, {_years(splits['val'])} for "
        f"validation and {_years(splits['test'])} for testing; {stats_text}",
        "",
        f"**Model.** A ClimaX-style [nguyen2023] Vision Transformer [dosovitskiy2021] with per-variable patch embedding "
        f"and variable aggregation (embedding {model['embed_dim']}, depth {model['depth']}, {model['num_heads']} heads, "
        f"MLP ratio {model.get('mlp_ratio', 4)}) predicts the normalized tendency at lead times "
        f"{', '.join(str(h) for h in train['lead_hours'])} h. Following [tsaris2024] we varied the patch size "
        f"p = {', '.join(str(p) for p in patch_sizes)}, and with it the sequence length.{seqlen_text} Every run was "
        f"trained for {train['steps']} steps of batch {train['batch_size']} ({samples} samples seen, the same for every "
        f"sequence length) with AdamW (learning rate {train['lr']}, weight decay {train.get('weight_decay', 0)}, "
        f"{train.get('warmup_steps', 0)} warm-up steps) on the latitude-weighted MSE.{_sweep_text(cfg)}",
        "",
        "**Parallelism and hardware.** " + _parallelism(cfg) + _hardware(training, env),
        "",
        "**Evaluation.** Forecasts of the test years were scored in WeatherBench 2 conventions [rasp2024]: "
        "cell-area latitude weights, MSE per initialization time reduced afterwards, RMSE reported as the square root "
        "of the mean MSE (headline) and as the mean of per-time RMSE, the uncentred anomaly correlation against the "
        f"climatology, and the bias.{against}{extrapolation_text}{results_text}",
        "",
        "**Software and provenance.** The workflow ran with Snakemake [molder2021]"
        + (f" ({n_jobs} jobs)" if n_jobs else "")
        + f" using {_versions(env)}, Python {env.get('python', '?')}"
        + (
            f", code at git commit {env['git']['commit'][:12]}"
            + (" with uncommitted changes" if env["git"].get("dirty") else "")
            if env.get("git", {}).get("commit")
            else ""
        )
        + ". Its provenance is recorded as a Workflow Run RO-Crate [soilandreyes2022; leo2024] "
        "(`ro-crate-metadata.json` beside this file).",
        "",
        "## References",
        "",
        *[f"- [{key}] {text}" for key, text in REFERENCES.items()],
        "",
    ]
    return "\n".join(para)


def _sweep_text(cfg: dict) -> str:
    """Window runs (sweep.window) and repeats over seeds (train.seeds), where the config has them."""
    text = ""
    window = ((cfg.get("sweep") or {}).get("window") or {}).get("window_size")
    if window:
        text += (
            f" Beside each of these full-attention runs, the same model with Swin-style shifted-window attention "
            f"[liu2021] ({window} x {window} tokens per window) was trained at the same patch size."
        )
    seeds = (cfg.get("train") or {}).get("seeds") or []
    if seeds:
        text += (
            f" Every run was repeated with {len(seeds)} seeds ({', '.join(str(s) for s in seeds)}: initial weights, "
            "sample order, dropout); scores are means over the seeds, their spread is in seeds_summary.csv."
        )
    return text


def _windows_text(path: Path) -> str:
    """The change from full to window attention at equal sequence length (eval/windows_vs_full.csv)."""
    if not path.exists():
        return ""
    table = pd.read_csv(path)
    if table.empty:
        return ""
    parts = [
        f"{r['variable']} at {int(r['lead_hours'])} h, {int(r['seq_len'])} tokens {float(r['change_pct']):+.1f}%"
        + (
            f" [{float(r['change_low_pct']):+.1f}, {float(r['change_high_pct']):+.1f}]"
            if not pd.isna(r["change_low_pct"])
            else ""
        )
        for _, r in table.iterrows()
    ]
    significant = [str(v) in ("True", "1", "1.0") for v in table["change_significant"]]
    verdict = "only changes whose interval excludes zero count as a difference" + (
        f"; {sum(significant)} of {len(significant)} do" if len(significant) else ""
    )
    return (
        " Window against full attention at equal sequence length, change of the headline RMSE: "
        + "; ".join(parts)
        + f" (windows_vs_full.csv; {verdict})."
    )


def _hours(data: dict) -> str:
    return ", ".join(f"{int(h):02d}" for h in data.get("hours", [0, 6, 12, 18]))


def _verdict(rows) -> str:
    """Which changes the data support: only an interval that excludes zero counts as a gain or a loss."""
    gains = [f"{r['variable']} at {int(r['lead_hours'])} h" for r in rows if float(r["change_high_pct"]) < 0]
    losses = [f"{r['variable']} at {int(r['lead_hours'])} h" for r in rows if float(r["change_low_pct"]) > 0]
    unclear = [
        f"{r['variable']} at {int(r['lead_hours'])} h"
        for r in rows
        if float(r["change_low_pct"]) <= 0 <= float(r["change_high_pct"])
    ]
    text = []
    if gains:
        text.append(f"The longest sequence was better beyond the bootstrap uncertainty for {_list(gains)}.")
    if losses:
        text.append(f"It was worse beyond the uncertainty for {_list(losses)}.")
    if unclear:
        text.append(f"For {_list(unclear)} the interval includes zero: no difference can be claimed.")
    return " ".join(text)
