"""methods.md: an editable methods paragraph written from the config, the results and the run record.

The text is a starting point for a paper: every number in it comes from the files of this run
(config, eval/metrics.csv, eval/seqlen_change.csv, the environment record), never typed by hand.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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


def _versions(env: dict) -> str:
    pkgs = env.get("packages", {})
    keys = ["seqvit", "torch", "snakemake", "xarray", "numpy", "scikit-learn", "rocrate"]
    return ", ".join(f"{k} {pkgs[k]}" for k in keys if pkgs.get(k))


def methods_text(cfg: dict, env: dict, eval_dir, n_jobs: int | None = None) -> str:
    eval_dir = Path(eval_dir)
    data, splits, model, train = cfg["data"], cfg["splits"], cfg["model"], cfg["train"]
    source = (cfg.get("source") or {}).get("kind", "synthetic")
    patch_sizes = [int(p) for p in cfg["tokenize"]["patch_sizes"]]
    channels = list(data.get("single_level", [])) + [
        f"{v} at {', '.join(str(lv) for lv in data.get('levels', []))} hPa" for v in data.get("pressure_level", [])
    ]
    parallel = cfg.get("parallel") or {}
    sp = int(parallel.get("sp", 1))
    hw = env.get("hardware", {})
    samples = int(train["steps"]) * int(train["batch_size"])

    seqlen_text, results_text = "", ""
    change_path, metrics_path = eval_dir / "seqlen_change.csv", eval_dir / "metrics.csv"
    if change_path.exists():
        change = pd.read_csv(change_path)
        cols = [c for c in change.columns if c.startswith("rmse_L")]
        lengths = [c[len("rmse_L"):].split("_p")[0] for c in cols]
        if lengths:
            seqlen_text = f" The sequence lengths are {', '.join(lengths)} tokens per sample."
        parts = [
            f"{r['variable']} at {int(r['lead_hours'])} h {float(r['change_pct']):+.1f}%"
            for _, r in change.iterrows() if not pd.isna(r["change_pct"])
        ]
        if parts:
            results_text += (
                " From the shortest to the longest sequence the headline RMSE of the ViT changed by "
                + "; ".join(parts) + " (tables/sequence_length.tex; [tsaris2024] report about 20% on ERA5)."
            )
    if metrics_path.exists():
        m = pd.read_csv(metrics_path)
        lead = int(m["lead_hours"].max())
        var = "t2m" if "t2m" in set(m["variable"]) else str(m["variable"].iloc[0])
        sel = m[(m["variable"] == var) & (m["lead_hours"] == lead)]
        scores = ", ".join(f"{r['model']} {r['rmse']:.2f}" for _, r in sel.iterrows())
        results_text += f" Headline {lead} h RMSE of {var}: {scores} (tables/rmse.tex)."

    para = [
        "# Methods (generated by `seqvit provenance`; edit freely)",
        "",
        f"**Data.** We used {_SOURCES.get(source, source)}: {', '.join(channels)} at {_hours(data)} UTC for the years "
        f"{_years(data['years'])}, regridded {cfg.get('regrid', {}).get('method', 'conservative')}ly to the "
        f"{cfg['grid']} grid. The years {_years(splits['train'])} were used for training, {_years(splits['val'])} for "
        f"validation and {_years(splits['test'])} for testing; normalization statistics and the day-of-year and hour "
        "climatology come from the training years only.",
        "",
        f"**Model.** A ClimaX-style [nguyen2023] Vision Transformer [dosovitskiy2021] with per-variable patch embedding "
        f"and variable aggregation (embedding {model['embed_dim']}, depth {model['depth']}, {model['num_heads']} heads, "
        f"MLP ratio {model.get('mlp_ratio', 4)}) predicts the normalized tendency at lead times "
        f"{', '.join(str(h) for h in train['lead_hours'])} h. Following [tsaris2024] we varied the patch size "
        f"p = {', '.join(str(p) for p in patch_sizes)}, and with it the sequence length.{seqlen_text} Every run was "
        f"trained for {train['steps']} steps of batch {train['batch_size']} ({samples} samples seen, the same for every "
        f"sequence length) with AdamW (learning rate {train['lr']}, weight decay {train.get('weight_decay', 0)}, "
        f"{train.get('warmup_steps', 0)} warm-up steps) on the latitude-weighted MSE.",
        "",
        f"**Parallelism and hardware.** "
        + (f"The token sequence of each sample was split over {sp} ranks ({parallel.get('sp_method', 'ulysses')}, "
           "[jacobs2023]). " if sp > 1 else "Training ran without sequence parallelism (one process per run). ")
        + f"Runs used {hw.get('cpu', 'an unrecorded CPU')} ({hw.get('cpu_count', '?')} logical cores"
        + (f", {hw['gpus']}" if hw.get("gpus") else ", no GPU")
        + f", {train.get('threads', 1)} threads per training job) on {hw.get('os', 'an unrecorded OS')}.",
        "",
        "**Evaluation.** Forecasts of the test years were scored in WeatherBench 2 conventions [rasp2024]: "
        "cell-area latitude weights, MSE per initialization time reduced afterwards, RMSE reported as the square root "
        "of the mean MSE (headline) and as the mean of per-time RMSE, the uncentred anomaly correlation against the "
        "climatology, and the bias, against climatology, persistence and a linear regression per lead time fitted on "
        f"the training years.{results_text}",
        "",
        f"**Software and provenance.** The workflow ran with Snakemake [molder2021]"
        + (f" ({n_jobs} jobs)" if n_jobs else "")
        + f" using {_versions(env)}, Python {env.get('python', '?')}"
        + (f", code at git commit {env['git']['commit'][:12]}" + (" with uncommitted changes" if env["git"].get("dirty") else "")
           if env.get("git", {}).get("commit") else "")
        + ". Its provenance is recorded as a Workflow Run RO-Crate [soilandreyes2022; leo2024] "
        "(`ro-crate-metadata.json` beside this file).",
        "",
        "## References",
        "",
        *[f"- [{key}] {text}" for key, text in REFERENCES.items()],
        "",
    ]
    return "\n".join(para)


def _hours(data: dict) -> str:
    return ", ".join(f"{int(h):02d}" for h in data.get("hours", [0, 6, 12, 18]))
